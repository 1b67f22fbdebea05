//! What quench writes into Slack and reads back. Text sent as mrkdwn interpolates with
//! [`escape`] and [`mention`]. An approval message carries one [`ApprovalButton`] per choice:
//! the runner's Slack connector writes them, Slack hands a clicked button's `action_id`,
//! `block_id` and `value` back untouched, and the gateway reads them — so the three are a wire
//! format between the two processes, defined here once:
//!
//! - `action_id` = `quench:<choice>`;
//! - `block_id` = `quench:<run_id>:<gate>` (the actions block of one gate's buttons);
//! - `value` = `{"run_id","gate","token","choice"}` as JSON (with `item` on a gate that asks per
//!   item, `ask` on a choice that needs a comment), read strictly (unknown fields are refused),
//!   and it must agree with the other two.
//!
//! A button with `ask` is not an answer by itself: the gateway opens a modal asking its question
//! and carries the button's value in the modal's `private_metadata`
//! ([`ApprovalButton::from_metadata`]); the submission is the answer, its text the comment.

use serde::{Deserialize, Serialize};

/// The prefix of every `action_id` and `block_id` quench writes.
pub const PREFIX: &str = "quench:";

/// Longest run id a button may name: the run id becomes one NATS subject token.
const MAX_RUN_ID: usize = 128;

/// One approval button: a choice on one gate of one run, with the gate's unguessable token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalButton {
    pub run_id: String,
    /// The gate's step id within the run.
    pub gate: String,
    pub token: String,
    pub choice: String,
    /// The item this button answers, on a gate that asks per item (absent otherwise, so an
    /// ordinary button's value is the JSON it has always been).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// The question to ask before this choice is an answer (the playbook's `comment_for`):
    /// a click opens a form with it, and the answer's comment is what was written there.
    /// Absent on a choice that needs no words, so such a button's value is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<String>,
}

/// Longest item id a button may name (the block id holds it, and Slack's limit is 255).
const MAX_ITEM: usize = 128;
/// Longest question a button carries, in characters ([`ApprovalButton::with_ask`] cuts it).
pub const MAX_ASK: usize = 300;
/// Slack's limit on a button's `value`, in characters; a value is never longer.
pub const MAX_VALUE: usize = 2000;
/// Longest comment a Slack form takes, in characters (the input's `max_length`).
pub const MAX_COMMENT: usize = 500;

/// Why a click is not on a quench approval button; the text is what the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ButtonError {
    #[error("this button is not a quench approval")]
    NotOurs,
    #[error("the button's value is not a quench approval")]
    Value,
    #[error("the button's action and value disagree")]
    ActionDisagrees,
    #[error("the button names no valid run")]
    RunId,
    #[error("the button's block and value disagree")]
    BlockDisagrees,
    #[error("the form is not a quench question")]
    Metadata,
}

impl ApprovalButton {
    /// `quench:<choice>`.
    pub fn action_id(&self) -> String {
        format!("{PREFIX}{}", self.choice)
    }

    /// The button's `value`: the run, the gate, its token, the choice (and the item), as JSON.
    pub fn value(&self) -> String {
        serde_json::to_string(self).expect("a button of strings serializes")
    }

    /// The `block_id` of the actions block holding this button: the gate's, or for an item the
    /// item's own (a message that lists items has one actions block per item).
    pub fn block_id(&self) -> String {
        match &self.item {
            None => block_id_of(&self.run_id, &self.gate),
            Some(item) => item_block_id_of(&self.run_id, &self.gate, item),
        }
    }

    /// The same button asking `question` first: cut (with `…`) so that the question has at
    /// most [`MAX_ASK`] characters and the whole value at most [`MAX_VALUE`].
    pub fn with_ask(mut self, question: &str) -> ApprovalButton {
        let question = question.trim();
        let mut kept: Vec<char> = question.chars().take(MAX_ASK).collect();
        let mut cut = question.chars().count() > MAX_ASK;
        if cut {
            kept.pop();
        }
        loop {
            let mut text: String = kept.iter().collect();
            if cut {
                text.push('…');
            }
            self.ask = Some(text);
            // JSON escapes can make one character up to six long, hence the measuring.
            if self.value().chars().count() <= MAX_VALUE || kept.is_empty() {
                return self;
            }
            kept.pop();
            cut = true;
        }
    }

    /// The button a click was on, from what Slack hands back: its `action_id`, the `block_id`
    /// of its block (when Slack sends it) and its `value`. Every part must agree with the value.
    pub fn parse(
        action_id: &str,
        block_id: Option<&str>,
        value: Option<&str>,
    ) -> Result<ApprovalButton, ButtonError> {
        let action_choice = action_id.strip_prefix(PREFIX).ok_or(ButtonError::NotOurs)?;
        let value = value.ok_or(ButtonError::NotOurs)?;
        let button = ApprovalButton::parse_value(value)?;
        if button.choice != action_choice {
            return Err(ButtonError::ActionDisagrees);
        }
        if let Some(block) = block_id
            && block != button.block_id()
        {
            return Err(ButtonError::BlockDisagrees);
        }
        Ok(button)
    }

    /// The button a modal's submission answers, from the modal's `private_metadata`: the
    /// value of a button that asks (written by the gateway when it opened the modal, handed
    /// back by Slack), checked as strictly as a click's. A value without a question never
    /// opened a modal, so it is refused too.
    pub fn from_metadata(metadata: &str) -> Result<ApprovalButton, ButtonError> {
        let button = ApprovalButton::parse_value(metadata).map_err(|_| ButtonError::Metadata)?;
        if button.ask.is_none() {
            return Err(ButtonError::Metadata);
        }
        Ok(button)
    }

    /// A button's value, read strictly: JSON of exactly these fields, at most [`MAX_VALUE`]
    /// characters, a run id that is one subject token, an item and a question within bounds.
    fn parse_value(value: &str) -> Result<ApprovalButton, ButtonError> {
        if value.chars().count() > MAX_VALUE {
            return Err(ButtonError::Value);
        }
        let button: ApprovalButton = serde_json::from_str(value).map_err(|_| ButtonError::Value)?;
        if button.run_id.is_empty()
            || button.run_id.len() > MAX_RUN_ID
            || !button
                .run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ButtonError::RunId);
        }
        if button
            .item
            .as_ref()
            .is_some_and(|item| item.is_empty() || item.len() > MAX_ITEM)
        {
            return Err(ButtonError::Value);
        }
        if button
            .ask
            .as_ref()
            .is_some_and(|ask| ask.chars().count() > MAX_ASK)
        {
            return Err(ButtonError::Value);
        }
        Ok(button)
    }
}

/// The `block_id` of the actions block holding a gate's buttons: `quench:<run_id>:<gate>`.
pub fn block_id_of(run_id: &str, gate: &str) -> String {
    format!("{PREFIX}{run_id}:{gate}")
}

/// The `block_id` of the actions block for one item of a gate that asks per item:
/// `quench:<run_id>:<gate>#<item>`.
pub fn item_block_id_of(run_id: &str, gate: &str, item: &str) -> String {
    format!("{PREFIX}{run_id}:{gate}#{item}")
}

/// The `block_id` of the text an approval message becomes once its gate closes (no buttons).
pub fn closed_block_id_of(run_id: &str, gate: &str) -> String {
    format!("{PREFIX}{run_id}:{gate}:closed")
}

/// A decider as Slack shows them: a Slack user (`T…/U…` or `U…`) as a mention, anyone else
/// (an email, an API token's name) as escaped text. Also the `mention` template filter.
pub fn mention(who: &str) -> String {
    let user = who.rsplit_once('/').map_or(who, |(_, user)| user);
    let is_slack_id = user.len() > 1
        && user.starts_with(['U', 'W'])
        && user
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if is_slack_id {
        format!("<@{user}>")
    } else {
        escape(who)
    }
}

/// Escapes text for Slack's mrkdwn: `&`, `<` and `>` (what makes mentions and links).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn escaping_defuses_mentions_and_links() {
        assert_eq!(
            escape("<!channel> & <https://evil.example|click>"),
            "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"
        );
    }

    #[test]
    fn the_value_is_the_json_the_gateway_has_always_read() {
        let button = ApprovalButton {
            run_id: "run-1".to_owned(),
            gate: "decide".to_owned(),
            token: "abc123".to_owned(),
            choice: "keep".to_owned(),
            item: None,
            ask: None,
        };
        assert_eq!(
            button.value(),
            r#"{"run_id":"run-1","gate":"decide","token":"abc123","choice":"keep"}"#
        );
        assert_eq!(button.block_id(), "quench:run-1:decide");
        let item = ApprovalButton {
            item: Some("project_key:key_1".to_owned()),
            ..button.clone()
        };
        assert_eq!(item.block_id(), "quench:run-1:decide#project_key:key_1");
        assert_eq!(
            ApprovalButton::parse(
                &item.action_id(),
                Some(&button.block_id()),
                Some(&item.value())
            ),
            Err(ButtonError::BlockDisagrees),
            "an item's button is refused under the gate's own block"
        );
        assert_eq!(button.action_id(), "quench:keep");
        assert_eq!(block_id_of("run-1", "decide"), "quench:run-1:decide");
        assert_eq!(
            closed_block_id_of("run-1", "decide"),
            "quench:run-1:decide:closed"
        );
    }

    fn button() -> impl Strategy<Value = ApprovalButton> {
        (
            "[A-Za-z0-9_-]{1,128}",
            any::<String>(),
            any::<String>(),
            any::<String>(),
            proptest::option::of("[A-Za-z0-9_:.-]{1,128}"),
            proptest::option::of(any::<String>()),
        )
            .prop_map(|(run_id, gate, token, choice, item, ask)| {
                let button = ApprovalButton {
                    run_id,
                    gate,
                    token,
                    choice,
                    item,
                    ask: None,
                };
                match ask {
                    Some(question) => button.with_ask(&question),
                    None => button,
                }
            })
    }

    #[test]
    fn a_question_rides_in_the_value_and_back_in_the_metadata() {
        let button = ApprovalButton {
            run_id: "run-1".to_owned(),
            gate: "review".to_owned(),
            token: "abc123".to_owned(),
            choice: "keep".to_owned(),
            item: Some("project_key:key_1".to_owned()),
            ask: None,
        };
        let asking = button.clone().with_ask("  What is this key for?\n");
        assert_eq!(
            asking.value(),
            r#"{"run_id":"run-1","gate":"review","token":"abc123","choice":"keep","item":"project_key:key_1","ask":"What is this key for?"}"#
        );
        assert_eq!(ApprovalButton::from_metadata(&asking.value()), Ok(asking));
        assert_eq!(
            ApprovalButton::from_metadata(&button.value()),
            Err(ButtonError::Metadata),
            "a value that asks nothing never opened a form"
        );
        for tampered in [
            "",
            "{}",
            r#"{"run_id":"run.>","gate":"g","token":"t","choice":"keep","ask":"?"}"#,
            r#"{"run_id":"run-1","gate":"g","token":"t","choice":"keep","ask":"?","extra":1}"#,
            r#"{"run_id":"run-1","gate":"g","token":"t","choice":"keep","item":"","ask":"?"}"#,
        ] {
            assert_eq!(
                ApprovalButton::from_metadata(tampered),
                Err(ButtonError::Metadata),
                "{tampered}"
            );
        }
        let long = format!(
            r#"{{"run_id":"run-1","gate":"g","token":"t","choice":"keep","ask":"{}"}}"#,
            "?".repeat(MAX_ASK + 1)
        );
        assert_eq!(
            ApprovalButton::from_metadata(&long),
            Err(ButtonError::Metadata)
        );
        let cut = button.clone().with_ask(&"why? ".repeat(100));
        let question = cut.ask.clone().expect("a question");
        assert_eq!(question.chars().count(), MAX_ASK);
        assert!(question.ends_with('…'));
        // Control characters are escaped six to one: the question is cut until the value fits.
        let escaped = button.with_ask(&"\u{1}".repeat(MAX_ASK));
        assert!(escaped.value().chars().count() <= MAX_VALUE);
        assert_eq!(ApprovalButton::from_metadata(&escaped.value()), Ok(escaped));
    }

    proptest! {
        /// What the runner writes, the gateway reads back as the same button, whether or not
        /// Slack sends the block id.
        #[test]
        fn a_button_round_trips(button in button()) {
            let block = button.block_id();
            let value = button.value();
            prop_assert_eq!(
                ApprovalButton::parse(&button.action_id(), Some(&block), Some(&value)),
                Ok(button.clone())
            );
            prop_assert_eq!(
                ApprovalButton::parse(&button.action_id(), None, Some(&value)),
                Ok(button)
            );
        }

        /// Whatever Slack hands back as a form's metadata, the button read from it is one
        /// that asks, within every bound, whose value reads back as itself.
        #[test]
        fn metadata_is_read_strictly(metadata in any::<String>()) {
            if let Ok(button) = ApprovalButton::from_metadata(&metadata) {
                prop_assert!(button.ask.as_ref().is_some_and(|ask| ask.chars().count() <= MAX_ASK));
                prop_assert!(!button.run_id.is_empty() && !button.run_id.contains(['.', '*', '>', ' ']));
                prop_assert_eq!(ApprovalButton::from_metadata(&button.value()), Ok(button));
            }
        }

        /// A button that asks fits Slack's limit on a value, and its value is the metadata
        /// the gateway reads back as the same button.
        #[test]
        fn an_asking_button_fits_and_round_trips(button in button(), question in any::<String>()) {
            let asking = button.with_ask(&question);
            prop_assert!(asking.value().chars().count() <= MAX_VALUE);
            prop_assert_eq!(ApprovalButton::from_metadata(&asking.value()), Ok(asking.clone()));
            prop_assert_eq!(
                ApprovalButton::parse(&asking.action_id(), Some(&asking.block_id()), Some(&asking.value())),
                Ok(asking)
            );
        }

        /// A button's value under another button's action or block is refused: a click
        /// cannot answer with a choice, run or gate its value does not name.
        #[test]
        fn parts_of_different_buttons_do_not_combine(one in button(), other in button()) {
            let value = one.value();
            if other.choice != one.choice {
                prop_assert_eq!(
                    ApprovalButton::parse(&other.action_id(), None, Some(&value)),
                    Err(ButtonError::ActionDisagrees)
                );
            }
            let block = other.block_id();
            if block != one.block_id() {
                prop_assert_eq!(
                    ApprovalButton::parse(&one.action_id(), Some(&block), Some(&value)),
                    Err(ButtonError::BlockDisagrees)
                );
            }
        }
    }
}
