//! Slack Socket Mode (slack-morphism 2.31.1): the gateway opens WebSockets to Slack
//! (`apps.connections.open` with `slack.app_token`, against `slack.api_url`), so no inbound port
//! is needed for clicks. Each `block_actions` envelope becomes a [`Click`] and is handled
//! exactly as over HTTP; the envelope is acknowledged once the decision is published. A
//! `view_submission` (a form asking for a comment) becomes a [`Submission`]; its envelope's
//! acknowledgement carries `response_action: errors` when the form should stay open. Slack
//! signs nothing here — the app token authenticates the connection — and it delivers an
//! unacknowledged envelope again, which the decision's stable id makes harmless.

use std::sync::Arc;

use quench_common::config::Secret;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use super::form::{INPUT_ACTION, INPUT_BLOCK, Submission};
use super::{Click, Interactions, form_error};

/// A running Socket Mode listener.
pub(crate) struct SocketMode {
    listener: SlackClientSocketModeListener<SlackClientHyperHttpsConnector>,
}

impl std::fmt::Debug for SocketMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketMode").finish_non_exhaustive()
    }
}

impl SocketMode {
    /// Connects (in the background, reconnecting as Slack asks) and starts taking clicks.
    pub(crate) async fn start(
        api_url: &str,
        app_token: &Secret,
        interactions: Arc<Interactions>,
    ) -> Result<SocketMode, String> {
        let connector = quench_common::slack::connector(api_url)?;
        let client = Arc::new(SlackClient::new(connector));
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(client)
                .with_error_handler(on_error)
                .with_user_state(interactions),
        );
        let callbacks =
            SlackSocketModeListenerCallbacks::new().with_interaction_events(on_interaction);
        let listener = SlackClientSocketModeListener::new(
            &SlackClientSocketModeConfig::new(),
            environment,
            callbacks,
        );
        listener
            .listen_for(&SlackApiToken::new(app_token.expose().to_owned().into()))
            .await
            .map_err(|error| format!("cannot start Slack Socket Mode: {}", describe(&error)))?;
        listener.start().await;
        Ok(SocketMode { listener })
    }

    /// Closes the WebSockets.
    pub(crate) async fn shutdown(&self) {
        self.listener.shutdown().await;
    }
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackInteractionResponse> {
    let interactions = state
        .read()
        .await
        .get_user_state::<Arc<Interactions>>()
        .cloned();
    let Some(interactions) = interactions else {
        return Ok(SlackInteractionResponse::Empty);
    };
    match event {
        SlackInteractionEvent::BlockActions(event) => match click(event) {
            Ok(click) => {
                interactions.take(click).await;
            }
            Err(problem) => tracing::info!(problem, "Socket Mode click refused"),
        },
        SlackInteractionEvent::ViewSubmission(event) => {
            let handled = interactions.submit(&submission(event)).await;
            // The answer to the envelope is what the form does: close (empty), or stay open
            // and say why nothing was recorded.
            if let Some(error) = form_error(&handled) {
                let errors = [(INPUT_BLOCK.to_owned(), error)].into_iter().collect();
                return Ok(SlackViewSubmissionResponse::Errors(
                    SlackViewSubmissionErrorsResponse::new(errors),
                )
                .into());
            }
        }
        _ => {}
    }
    // Acknowledged in every case: a failed publish was told to the user (click again), and a
    // refused click fails the same way when delivered again.
    Ok(SlackInteractionResponse::Empty)
}

/// The submission in a `view_submission` envelope: the view's id, callback id, metadata and
/// the input's value, by the user who submitted it.
fn submission(event: SlackInteractionViewSubmissionEvent) -> Submission {
    let (callback_id, metadata) = match event.view.view {
        SlackView::Modal(modal) => (modal.callback_id.map(|id| id.0), modal.private_metadata),
        SlackView::Home(home) => (home.callback_id.map(|id| id.0), home.private_metadata),
    };
    let comment = event
        .view
        .state_params
        .state
        .as_ref()
        .and_then(|state| state.values.get(&SlackBlockId(INPUT_BLOCK.to_owned())))
        .and_then(|block| block.get(&SlackActionId(INPUT_ACTION.to_owned())))
        .and_then(|input| input.value.clone());
    Submission {
        team: event.user.team_id.unwrap_or(event.team.id).0,
        user: event.user.id.0,
        username: event.user.username,
        view_id: event.view.state_params.id.0,
        callback_id,
        metadata,
        comment,
    }
}

/// The click in a `block_actions` envelope: exactly one action, by a known user.
fn click(event: SlackInteractionBlockActionsEvent) -> Result<Click, &'static str> {
    let user = event.user.ok_or("the interaction names no user")?;
    let actions = event.actions.unwrap_or_default();
    let [action] = <[SlackInteractionActionInfo; 1]>::try_from(actions)
        .map_err(|_| "the interaction does not have exactly one action")?;
    Ok(Click {
        team: user.team_id.unwrap_or(event.team.id).0,
        user: user.id.0,
        username: user.username,
        action_id: action.action_id.0,
        block_id: action.block_id.map(|block| block.0),
        value: action.value,
        moment: action
            .action_ts
            .map_or_else(|| event.trigger_id.0.clone(), |moment| moment.0),
        response_url: event.response_url.map(|url| url.0.to_string()),
        trigger_id: Some(event.trigger_id.0),
    })
}

/// Socket Mode's errors (connecting, frames that do not parse). Logged by kind only: the
/// errors' text can quote whole frames, which carry `response_url`s and user details.
fn on_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<SlackHyperClient>,
    _state: SlackClientEventsUserState,
) -> HttpStatusCode {
    let what = match error.downcast_ref::<SlackClientError>() {
        Some(error) => describe(error),
        None => "an error in the Socket Mode client".to_owned(),
    };
    tracing::warn!(problem = %what, "Slack Socket Mode");
    // Acknowledge: nothing about a frame that fails here gets better when Slack sends it again.
    HttpStatusCode::OK
}

/// What went wrong, without any body or token.
pub(crate) fn describe(error: &SlackClientError) -> String {
    match error {
        SlackClientError::ApiError(api) => format!("Slack refused the call ({})", api.code),
        SlackClientError::HttpError(http) => format!("Slack answered HTTP {}", http.status_code),
        SlackClientError::RateLimitError(_) => "Slack rate-limited the call".to_owned(),
        SlackClientError::HttpProtocolError(_) => "could not reach Slack".to_owned(),
        SlackClientError::ProtocolError(_) => "a message from Slack did not parse".to_owned(),
        SlackClientError::SocketModeProtocolError(_) => "a Socket Mode protocol error".to_owned(),
        SlackClientError::EndOfStream(_) => "the connection closed".to_owned(),
        SlackClientError::SystemError(_) => "a Socket Mode client error".to_owned(),
    }
}
