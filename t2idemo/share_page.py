"""The app's Share tab, and each labeler's consent to be named.

Where the app runs on a Hugging Face Space (``t2idemo.spacesync.space_id()``), a visitor shares by signing in with
Hugging Face (Gradio's LoginButton; the OAuth token of the session, scopes ``t2idemo.space.OAUTH_SCOPES``): nobody
pastes a write token into someone else's server. The pasted-token field is there only for a local app.

A labeler's name goes to the Hub only with that labeler's own consent: each visitor ticks "publish my name" for the
name they label under, and it is recorded in the labelling folder (``t2idemo.consent``); a push names those who
agreed and calls the others 'labeler 1', 'labeler 2', ...
"""

from .consent import set_consent


def consent(app, agreed, state):
    """The "publish my name" box -> a line saying what was recorded for this visitor's labeler name."""
    state = app.session(state)
    who = state.get("labeler")
    set_consent(app.label_dir, who, agreed)
    return (
        f"Recorded: **{who}** may be named with their labels on the Hub."
        if agreed
        else f"Recorded: **{who}** is never named on the Hub (their labels go as 'labeler N')."
    )


def share_tab(app, gr, session, ui_errors, on_space: bool):
    """Share: a repo id, what to push, and a token: "Sign in with Hugging Face" on a Space, a pasted one locally."""
    gr.Markdown(
        "Push **your model** (made in the Train tab)"
        + (", or the app's aligned model if you made none," if app.cfg.share_shipped else "")
        + " with a model card that records how it was made, its reward "
        "model and the labels to the Hugging Face Hub. A labeler is named only if they ticked *publish my "
        "name* below themselves; the others become 'labeler 1', 'labeler 2', ... "
        + (
            "Sign in with Hugging Face to push to your account."
            if on_space
            else "The token is used for this push only: it is not saved or logged."
        )
    )
    with gr.Row():
        repo = gr.Textbox(label="repo id", placeholder="owner/name", elem_id="share-repo", max_length=200)
        if on_space:
            gr.LoginButton(elem_id="share-login")
        else:
            token = gr.Textbox(
                label="token",
                type="password",
                placeholder="hf_... (write access)",
                elem_id="share-token",
                max_length=400,
            )
    with gr.Row():
        private = gr.Checkbox(label="private", value=False)
        with_reward = gr.Checkbox(label="reward model", value=True)
        with_labels = gr.Checkbox(label="labels dataset", value=True, elem_id="share-labels")
        with_names = gr.Checkbox(label="name the labelers who agreed", value=True, elem_id="share-names")
    push = gr.Button("Push to the Hub", variant="primary", elem_id="share-push")
    result = gr.Markdown(elem_id="share-result")
    with gr.Row():
        mine = gr.Checkbox(
            label="publish my name (the one I label under) with my labels", value=False, elem_id="share-consent"
        )
        consent_md = gr.Markdown(elem_id="share-consent-result")
    mine.input(ui_errors(lambda agreed, state: consent(app, agreed, state), gr), [mine, session], [consent_md])
    kw = dict(concurrency_limit=1, concurrency_id="share")
    if not on_space:
        push.click(
            ui_errors(app.share, gr),
            [repo, token, private, with_reward, with_labels, with_names, session],
            [result],
            **kw,
        )
        return

    def push_signed_in(
        repo_id, private, with_reward, with_labels, with_names, state, oauth_token: gr.OAuthToken | None = None
    ):
        if oauth_token is None:
            raise ValueError("sign in with Hugging Face first (the button above), then push")
        return app.share(repo_id, oauth_token.token, private, with_reward, with_labels, with_names, state)

    push.click(
        ui_errors(push_signed_in, gr), [repo, private, with_reward, with_labels, with_names, session], [result], **kw
    )
