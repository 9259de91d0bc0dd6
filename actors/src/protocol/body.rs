//! Message bodies: plain text or one of the actions (poll, survey, announcement).

use serde::{Deserialize, Serialize};

/// What a message carries. On the wire a map with exactly one key naming the kind:
/// `{"text": "hi"}`, `{"poll": {...}}`, `{"survey": {...}}`, `{"announcement": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Text(String),
    Poll(Poll),
    Survey(Survey),
    Announcement(Announcement),
}

impl Body {
    /// True for the actions (anything but plain text): they flow down hierarchical groups.
    pub fn is_action(&self) -> bool {
        !matches!(self, Body::Text(_))
    }
}

/// A poll: one question, fixed options, single or multiple choice, optional deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Poll {
    pub question: String,
    pub options: Vec<String>,
    #[serde(default)]
    pub multi: bool,
    /// Milliseconds since the Unix epoch after which answers are refused.
    #[serde(default)]
    pub deadline: Option<i64>,
}

/// A survey: several questions of kind choice, text or number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Survey {
    pub title: String,
    pub questions: Vec<SurveyQuestion>,
    #[serde(default)]
    pub deadline: Option<i64>,
}

/// One question of a survey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyQuestion {
    pub q: String,
    #[serde(rename = "type")]
    pub kind: QuestionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
}

/// The kind of answer a survey question takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    Choice,
    Text,
    Number,
}

/// An announcement: text that may allow likes and comments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub text: String,
    #[serde(default = "yes")]
    pub likes: bool,
    #[serde(default = "yes")]
    pub comments: bool,
}

fn yes() -> bool {
    true
}
