//! Wire types of the action ops (`action.respond`, `action.results`, `like`) and of the events
//! they cause (`action_response`, `action_results`). Every type encodes the same way in JSON and
//! in MessagePack with named fields, as `PROTOCOL.md`, "v1 groups and actions", lays out.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

use super::frames::Id;

/// A user's answer to an action, as `action.respond` carries it in `answer`. A map with exactly
/// one key naming the shape: `{"choice": [i]}` for a poll, `{"answers": [...]}` for a survey,
/// `{"comment": s}` for an announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Poll: the chosen option indexes (exactly one unless the poll is `multi`).
    Choice(Vec<u32>),
    /// Survey: one answer per question, in question order.
    Answers(Vec<SurveyAnswer>),
    /// Announcement: one comment; comments accumulate, they do not replace each other.
    Comment(String),
}

/// The answer to one survey question: `{"choice": [i]}`, `{"text": s}` or `{"number": x}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SurveyAnswer {
    /// A `choice` question: the chosen option index.
    Choice(Vec<u32>),
    /// A `text` question.
    Text(String),
    /// A `number` question; must be finite.
    Number(f64),
}

/// Params of `action.respond`: the caller answers the action `msg_id` in `conv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRespond {
    /// The conversation the message is in.
    pub conv: Id,
    /// The message (the action) in that conversation.
    pub msg_id: Id,
    /// The caller's answer; its shape must fit the action.
    pub answer: Answer,
}

/// Params of `action.results`: the tally of the action `msg_id` as seen from `conv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResultsReq {
    /// The conversation the message is in.
    pub conv: Id,
    /// The message (the action) in that conversation.
    pub msg_id: Id,
}

/// Params of `like`: the caller likes (`on: true`) or unlikes the message `msg_id` in `conv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LikeReq {
    /// The conversation the message is in.
    pub conv: Id,
    /// The message (the action) in that conversation.
    pub msg_id: Id,
    /// `true` to like, `false` to take the like back.
    pub on: bool,
}

/// `ok` of `like`: how many users like the message after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LikesOk {
    /// Users who like the message.
    pub likes: u64,
}

/// `ok` of `action.results` (and the body of the `action_results` event). Untagged: the shape
/// tells the kind, because the client already knows which action it asked about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionResults {
    /// `{"respondents": n, "counts": [n]}`.
    Poll(PollResults),
    /// `{"respondents": n, "questions": [...]}`.
    Survey(SurveyResults),
    /// `{"likes": n, "comments": [{user, text}]}`; also the results of a liked text message.
    Announcement(AnnouncementResults),
}

/// Results of a poll: how many users answered, and how many chose each option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResults {
    /// Users who answered, each counted once.
    pub respondents: u64,
    /// One count per option, in option order.
    pub counts: Vec<u64>,
}

/// Results of a survey: how many users answered, and one summary per question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyResults {
    /// Users who answered, each counted once.
    pub respondents: u64,
    /// One entry per question, in question order.
    pub questions: Vec<QuestionResults>,
}

/// The summary of one survey question; the shape follows the question's kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuestionResults {
    /// A `choice` question: `{"counts": [n]}`, one count per option.
    Choice {
        /// Users who chose each option, in option order.
        counts: Vec<u64>,
    },
    /// A `text` question: `{"texts": [s]}`, ordered by user id so results are deterministic.
    Text {
        /// Every text answer.
        texts: Vec<String>,
    },
    /// A `number` question: `{"count", "min", "max", "mean"}`; the last three are `null` while
    /// nobody has answered.
    Number {
        /// Users who answered the question.
        count: u64,
        /// The smallest answer.
        min: Option<f64>,
        /// The largest answer.
        max: Option<f64>,
        /// The mean of the answers.
        mean: Option<f64>,
    },
}

/// Results of an announcement (or any liked message): likes and comments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncementResults {
    /// Users who like the message.
    pub likes: u64,
    /// Comments in arrival order.
    pub comments: Vec<CommentView>,
}

/// One comment on an announcement: `{"user", "text"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentView {
    /// Who wrote the comment.
    pub user: Id,
    /// The comment.
    pub text: String,
}

/// Payload of the `action_response` event, sent to the action's creator when `user` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResponseEvent {
    /// The conversation the message is in.
    pub conv: Id,
    /// The message (the action) in that conversation.
    pub msg_id: Id,
    /// The user who answered.
    pub user: Id,
}

/// Payload of the `action_results` event: `{conv, msg_id, ...results}`, sent to whoever may see
/// the results after each change. The results' fields sit beside `conv` and `msg_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResultsEvent {
    /// The conversation the message is in.
    pub conv: Id,
    /// The message (the action) in that conversation.
    pub msg_id: Id,
    /// The results, flattened into the event.
    #[serde(flatten)]
    pub results: ActionResults,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;
    use std::fmt::Debug;

    /// Encodes in both codecs, checks the JSON shape, and decodes both back to the same value.
    fn round_trip<T>(value: &T, expected: serde_json::Value)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let j = serde_json::to_value(value).unwrap();
        assert_eq!(j, expected);
        let back: T = serde_json::from_value(j).unwrap();
        assert_eq!(&back, value);
        let mp = rmp_serde::to_vec_named(value).unwrap();
        let back: T = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!(&back, value);
        // The MessagePack bytes carry the same named map as the JSON.
        let as_json: serde_json::Value = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!(as_json, expected);
    }

    #[test]
    fn answers_round_trip() {
        round_trip(&Answer::Choice(vec![0, 2]), json!({"choice": [0, 2]}));
        round_trip(&Answer::Comment("ok".into()), json!({"comment": "ok"}));
        round_trip(
            &Answer::Answers(vec![
                SurveyAnswer::Choice(vec![1]),
                SurveyAnswer::Text("blue".into()),
                SurveyAnswer::Number(4.5),
            ]),
            json!({"answers": [{"choice": [1]}, {"text": "blue"}, {"number": 4.5}]}),
        );
    }

    #[test]
    fn integer_number_answer_decodes() {
        let a: SurveyAnswer = serde_json::from_value(json!({"number": 3})).unwrap();
        assert_eq!(a, SurveyAnswer::Number(3.0));
    }

    #[test]
    fn wrong_answer_shape_fails_to_decode() {
        assert!(serde_json::from_value::<Answer>(json!({"vote": [1]})).is_err());
        assert!(serde_json::from_value::<Answer>(json!({"choice": 1})).is_err());
        assert!(serde_json::from_value::<Answer>(json!({"choice": [-1]})).is_err());
        assert!(serde_json::from_value::<Answer>(json!({"choice": [1], "comment": "x"})).is_err());
    }

    #[test]
    fn params_round_trip() {
        round_trip(
            &ActionRespond {
                conv: "g1".into(),
                msg_id: "m1".into(),
                answer: Answer::Choice(vec![1]),
            },
            json!({"conv": "g1", "msg_id": "m1", "answer": {"choice": [1]}}),
        );
        round_trip(
            &ActionResultsReq {
                conv: "g1".into(),
                msg_id: "m1".into(),
            },
            json!({"conv": "g1", "msg_id": "m1"}),
        );
        round_trip(
            &LikeReq {
                conv: "g1".into(),
                msg_id: "m1".into(),
                on: true,
            },
            json!({"conv": "g1", "msg_id": "m1", "on": true}),
        );
        round_trip(&LikesOk { likes: 3 }, json!({"likes": 3}));
    }

    fn survey_results() -> ActionResults {
        ActionResults::Survey(SurveyResults {
            respondents: 2,
            questions: vec![
                QuestionResults::Choice { counts: vec![1, 1] },
                QuestionResults::Text {
                    texts: vec!["a".into(), "b".into()],
                },
                QuestionResults::Number {
                    count: 2,
                    min: Some(1.0),
                    max: Some(2.5),
                    mean: Some(1.75),
                },
                QuestionResults::Number {
                    count: 0,
                    min: None,
                    max: None,
                    mean: None,
                },
            ],
        })
    }

    #[test]
    fn results_round_trip_in_both_codecs() {
        round_trip(
            &ActionResults::Poll(PollResults {
                respondents: 3,
                counts: vec![2, 0, 1],
            }),
            json!({"respondents": 3, "counts": [2, 0, 1]}),
        );
        round_trip(
            &survey_results(),
            json!({"respondents": 2, "questions": [
                {"counts": [1, 1]},
                {"texts": ["a", "b"]},
                {"count": 2, "min": 1.0, "max": 2.5, "mean": 1.75},
                {"count": 0, "min": null, "max": null, "mean": null},
            ]}),
        );
        round_trip(
            &ActionResults::Announcement(AnnouncementResults {
                likes: 2,
                comments: vec![CommentView {
                    user: "u1".into(),
                    text: "nice".into(),
                }],
            }),
            json!({"likes": 2, "comments": [{"user": "u1", "text": "nice"}]}),
        );
        // Empty results keep their shape.
        round_trip(
            &ActionResults::Poll(PollResults {
                respondents: 0,
                counts: vec![0, 0],
            }),
            json!({"respondents": 0, "counts": [0, 0]}),
        );
        round_trip(
            &ActionResults::Announcement(AnnouncementResults {
                likes: 0,
                comments: vec![],
            }),
            json!({"likes": 0, "comments": []}),
        );
    }

    #[test]
    fn events_round_trip_with_results_flattened() {
        round_trip(
            &ActionResponseEvent {
                conv: "g1".into(),
                msg_id: "m1".into(),
                user: "u1".into(),
            },
            json!({"conv": "g1", "msg_id": "m1", "user": "u1"}),
        );
        round_trip(
            &ActionResultsEvent {
                conv: "g1".into(),
                msg_id: "m1".into(),
                results: ActionResults::Poll(PollResults {
                    respondents: 1,
                    counts: vec![1, 0],
                }),
            },
            json!({"conv": "g1", "msg_id": "m1", "respondents": 1, "counts": [1, 0]}),
        );
        round_trip(
            &ActionResultsEvent {
                conv: "g1".into(),
                msg_id: "m1".into(),
                results: survey_results(),
            },
            json!({"conv": "g1", "msg_id": "m1", "respondents": 2, "questions": [
                {"counts": [1, 1]},
                {"texts": ["a", "b"]},
                {"count": 2, "min": 1.0, "max": 2.5, "mean": 1.75},
                {"count": 0, "min": null, "max": null, "mean": null},
            ]}),
        );
    }

    /// The event payloads also work as newtype variants of an internally tagged enum, which is
    /// how the `Event` enum carries them.
    #[test]
    fn events_work_inside_an_internally_tagged_enum() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "ev", rename_all = "snake_case")]
        enum Ev {
            ActionResponse(ActionResponseEvent),
            ActionResults(ActionResultsEvent),
        }
        round_trip(
            &Ev::ActionResults(ActionResultsEvent {
                conv: "g1".into(),
                msg_id: "m1".into(),
                results: ActionResults::Announcement(AnnouncementResults {
                    likes: 1,
                    comments: vec![],
                }),
            }),
            json!({"ev": "action_results", "conv": "g1", "msg_id": "m1", "likes": 1,
                   "comments": []}),
        );
        round_trip(
            &Ev::ActionResults(ActionResultsEvent {
                conv: "g1".into(),
                msg_id: "m1".into(),
                results: survey_results(),
            }),
            json!({"ev": "action_results", "conv": "g1", "msg_id": "m1", "respondents": 2,
                   "questions": [
                {"counts": [1, 1]},
                {"texts": ["a", "b"]},
                {"count": 2, "min": 1.0, "max": 2.5, "mean": 1.75},
                {"count": 0, "min": null, "max": null, "mean": null},
            ]}),
        );
        round_trip(
            &Ev::ActionResponse(ActionResponseEvent {
                conv: "g1".into(),
                msg_id: "m1".into(),
                user: "u1".into(),
            }),
            json!({"ev": "action_response", "conv": "g1", "msg_id": "m1", "user": "u1"}),
        );
    }
}
