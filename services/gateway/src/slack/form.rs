//! The form (a Slack modal) that asks for a comment before a choice is an answer: a click on a
//! button whose value carries a question (`ApprovalButton::ask`, from the playbook's
//! `comment_for`) opens it with `views.open` and the click's `trigger_id`; its submission
//! (`view_submission`) is the answer. The button travels in the modal's `private_metadata`
//! and comes back through Slack, which is why it is read again as strictly as a click
//! (`ApprovalButton::from_metadata`); the one who answers is the submitting user, never anything
//! in the metadata.

use std::sync::Arc;

use quench_common::config::Secret;
use quench_proto::slack::{ApprovalButton, MAX_COMMENT, escape};
use slack_morphism::prelude::*;

use super::socket::describe;

/// The `callback_id` of quench's forms: a submission of any other view is not ours.
pub(crate) const CALLBACK_ID: &str = "quench:comment";
/// The input block, and the input's `action_id`, whose value is the comment.
pub(crate) const INPUT_BLOCK: &str = "quench:comment";
pub(crate) const INPUT_ACTION: &str = "comment";
/// Slack's limit on a modal's title, in characters.
const TITLE_MAX: usize = 24;

/// Opens forms with the bot token (`slack.bot_token`), through `slack.api_url`.
pub(crate) struct Asker {
    client: SlackHyperClient,
    token: SlackApiToken,
}

impl std::fmt::Debug for Asker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asker").finish_non_exhaustive()
    }
}

impl Asker {
    pub(crate) fn new(api_url: &str, bot_token: &Secret) -> Result<Asker, String> {
        Ok(Asker {
            client: SlackClient::new(quench_common::slack::connector(api_url)?),
            token: SlackApiToken::new(bot_token.expose().to_owned().into()),
        })
    }

    /// Opens the form for `button` in front of the user who clicked (`trigger_id`, valid for 3
    /// seconds and once). The error is what the user is told; it holds no token or body.
    pub(crate) async fn open(
        self: &Arc<Self>,
        trigger_id: &str,
        button: &ApprovalButton,
    ) -> Result<(), String> {
        let session = self.client.open_session(&self.token);
        session
            .views_open(&SlackApiViewsOpenRequest::new(
                SlackTriggerId(trigger_id.to_owned()),
                view(button),
            ))
            .await
            .map(|_| ())
            .map_err(|error| describe(&error))
    }
}

/// The form for a button that asks: what is being answered, the question, one plain-text input
/// of at most [`MAX_COMMENT`] characters; the button's value as `private_metadata`.
pub(crate) fn view(button: &ApprovalButton) -> SlackView {
    let mut context = format!("Your answer: *{}*", escape(&button.choice));
    if let Some(item) = &button.item {
        context.push_str(&format!(" for `{}`", escape(item)));
    }
    let question = button
        .ask
        .as_deref()
        .filter(|question| !question.is_empty())
        .unwrap_or("Your comment");
    let title: String = format!("Answer {}", button.choice)
        .chars()
        .take(TITLE_MAX)
        .collect();
    let input = SlackBlockPlainTextInputElement::new()
        .with_action_id(SlackActionId(INPUT_ACTION.to_owned()))
        .with_multiline(true)
        .with_min_length(1)
        .with_max_length(MAX_COMMENT as u64);
    SlackView::Modal(
        SlackModalView::new(
            pt!(title),
            vec![
                SlackSectionBlock::new().with_text(md!(context)).into(),
                SlackInputBlock::new(pt!(question.to_owned()), input.into())
                    .with_block_id(SlackBlockId(INPUT_BLOCK.to_owned()))
                    .into(),
            ],
        )
        .with_submit(pt!("Send"))
        .with_close(pt!("Cancel"))
        .with_callback_id(SlackCallbackId(CALLBACK_ID.to_owned()))
        .with_private_metadata(button.value()),
    )
}

/// One form submission, as either transport delivers it. Slack vouches for the team, the user
/// and the view id; the callback id, metadata and comment are read strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Submission {
    pub(crate) team: String,
    pub(crate) user: String,
    pub(crate) username: Option<String>,
    /// The view's id: what makes the decision id the same when Slack delivers it again.
    pub(crate) view_id: String,
    pub(crate) callback_id: Option<String>,
    pub(crate) metadata: Option<String>,
    /// The input's value, as typed.
    pub(crate) comment: Option<String>,
}

impl Submission {
    /// The button this submission answers, and its comment (trimmed, not empty, at most
    /// [`MAX_COMMENT`] characters), or what the user is told.
    pub(crate) fn answer(&self) -> Result<(ApprovalButton, String), String> {
        if self.callback_id.as_deref() != Some(CALLBACK_ID) {
            return Err("this form is not a quench question".to_owned());
        }
        let button = ApprovalButton::from_metadata(self.metadata.as_deref().unwrap_or_default())
            .map_err(|error| error.to_string())?;
        let comment = self.comment.as_deref().unwrap_or_default().trim();
        if comment.is_empty() {
            return Err("please write a few words".to_owned());
        }
        let length = comment.chars().count();
        if length > MAX_COMMENT {
            return Err(format!(
                "please keep it under {MAX_COMMENT} characters (this is {length})"
            ));
        }
        Ok((button, comment.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn button() -> ApprovalButton {
        ApprovalButton {
            run_id: "run-1".to_owned(),
            gate: "review".to_owned(),
            token: "abc123".to_owned(),
            choice: "keep".to_owned(),
            item: Some("project_key:key_1".to_owned()),
            ask: None,
        }
        .with_ask("What is this key for?")
    }

    fn submission(comment: &str) -> Submission {
        Submission {
            team: "T1".to_owned(),
            user: "U111".to_owned(),
            username: None,
            view_id: "V1".to_owned(),
            callback_id: Some(CALLBACK_ID.to_owned()),
            metadata: Some(button().value()),
            comment: Some(comment.to_owned()),
        }
    }

    #[test]
    fn the_form_carries_the_button_and_asks_its_question() {
        let view = serde_json::to_value(view(&button())).expect("a view serializes");
        assert_eq!(view["type"], "modal");
        assert_eq!(view["callback_id"], CALLBACK_ID);
        assert_eq!(view["private_metadata"], button().value());
        assert_eq!(view["title"]["text"], "Answer keep");
        assert_eq!(view["blocks"][1]["type"], "input");
        assert_eq!(view["blocks"][1]["block_id"], INPUT_BLOCK);
        assert_eq!(view["blocks"][1]["label"]["text"], "What is this key for?");
        assert_eq!(view["blocks"][1]["element"]["type"], "plain_text_input");
        assert_eq!(view["blocks"][1]["element"]["action_id"], INPUT_ACTION);
        assert_eq!(view["blocks"][1]["element"]["max_length"], 500);
        let long = ApprovalButton {
            choice: "a-choice-longer-than-a-title".to_owned(),
            ..button()
        };
        let view = serde_json::to_value(super::view(&long)).expect("a view serializes");
        assert_eq!(
            view["title"]["text"].as_str().map(|t| t.chars().count()),
            Some(TITLE_MAX)
        );
    }

    #[test]
    fn a_submission_is_read_strictly() {
        assert_eq!(
            submission("  the billing exporter \n").answer(),
            Ok((button(), "the billing exporter".to_owned()))
        );
        assert!(submission("   ").answer().is_err());
        assert!(submission(&"x".repeat(MAX_COMMENT + 1)).answer().is_err());
        assert!(submission(&"é".repeat(MAX_COMMENT)).answer().is_ok());
        let mut other = submission("x");
        other.callback_id = Some("someone-else".to_owned());
        assert!(other.answer().is_err());
        let mut tampered = submission("x");
        tampered.metadata = Some(button().value().replace("run-1", "run.>"));
        assert!(tampered.answer().is_err());
        let mut plain = submission("x");
        plain.metadata = Some(
            ApprovalButton {
                ask: None,
                ..button()
            }
            .value(),
        );
        assert_eq!(
            plain.answer(),
            Err("the form is not a quench question".to_owned())
        );
    }
}
