//! Rules of actions (polls, surveys, announcements): what a well-formed action is, which answers
//! and likes it takes, and the tally that turns answers into results. Pure: the actors call these
//! and persist the [`Tally`]; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::protocol::actions::{
    ActionResults, AnnouncementResults, Answer, CommentView, PollResults, QuestionResults,
    SurveyAnswer, SurveyResults,
};
use crate::protocol::body::QuestionKind;
use crate::protocol::error::KResult;
use crate::protocol::frames::Id;
use crate::protocol::{Body, KaiwaError};

/// Fewest options a poll or a survey `choice` question may offer: one option is no choice.
pub const MIN_OPTIONS: usize = 2;
/// Most options a poll or a survey `choice` question may offer, to keep actions readable and
/// results small.
pub const MAX_OPTIONS: usize = 32;
/// Most questions a survey may ask, to bound the size of answers and results.
pub const MAX_QUESTIONS: usize = 50;

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

fn check_options(options: &[String]) -> KResult<()> {
    if !(MIN_OPTIONS..=MAX_OPTIONS).contains(&options.len()) {
        return Err(KaiwaError::bad_frame(format!(
            "{MIN_OPTIONS} to {MAX_OPTIONS} options are needed, got {}",
            options.len()
        )));
    }
    if let Some(i) = options.iter().position(|o| blank(o)) {
        return Err(KaiwaError::bad_frame(format!("option {i} is empty")));
    }
    Ok(())
}

fn check_new_deadline(deadline: Option<i64>, now_ms: i64) -> KResult<()> {
    match deadline {
        Some(d) if d < now_ms => Err(KaiwaError::bad_frame("the deadline is already past")),
        _ => Ok(()),
    }
}

fn check_open(deadline: Option<i64>, now_ms: i64) -> KResult<()> {
    match deadline {
        Some(d) if now_ms > d => Err(KaiwaError::conflict("the deadline has passed")),
        _ => Ok(()),
    }
}

fn in_question(i: usize, e: KaiwaError) -> KaiwaError {
    KaiwaError::new(e.code, format!("question {i}: {}", e.message))
}

/// Checks an action before it is stored by `send`, so that every stored action can be answered
/// and tallied: a poll needs a question and 2..=32 non-empty options; a survey a title and
/// 1..=50 questions, where `choice` questions carry 2..=32 options and `text`/`number` questions
/// carry none; an announcement needs text. A deadline already past is refused. Every refusal is
/// `bad_frame`. Plain text is always fine here.
pub fn validate_action(body: &Body, now_ms: i64) -> KResult<()> {
    match body {
        Body::Text(_) => Ok(()),
        Body::Poll(p) => {
            if blank(&p.question) {
                return Err(KaiwaError::bad_frame("a poll needs a question"));
            }
            check_options(&p.options)?;
            check_new_deadline(p.deadline, now_ms)
        }
        Body::Survey(s) => {
            if blank(&s.title) {
                return Err(KaiwaError::bad_frame("a survey needs a title"));
            }
            if !(1..=MAX_QUESTIONS).contains(&s.questions.len()) {
                return Err(KaiwaError::bad_frame(format!(
                    "a survey needs 1 to {MAX_QUESTIONS} questions, got {}",
                    s.questions.len()
                )));
            }
            for (i, q) in s.questions.iter().enumerate() {
                if blank(&q.q) {
                    return Err(KaiwaError::bad_frame(format!("question {i} is empty")));
                }
                match (q.kind, &q.options) {
                    (QuestionKind::Choice, Some(options)) => {
                        check_options(options).map_err(|e| in_question(i, e))?
                    }
                    (QuestionKind::Choice, None) => {
                        return Err(KaiwaError::bad_frame(format!(
                            "question {i}: a choice question needs options"
                        )))
                    }
                    (QuestionKind::Text | QuestionKind::Number, Some(options))
                        if !options.is_empty() =>
                    {
                        return Err(KaiwaError::bad_frame(format!(
                            "question {i}: only choice questions take options"
                        )))
                    }
                    _ => {}
                }
            }
            check_new_deadline(s.deadline, now_ms)
        }
        Body::Announcement(a) => {
            if blank(&a.text) {
                return Err(KaiwaError::bad_frame("an announcement needs text"));
            }
            Ok(())
        }
    }
}

/// Checks chosen indexes against `n_options`: at least one, exactly one unless `multi`, no
/// duplicates, none out of range.
fn check_choices(choices: &[u32], n_options: usize, multi: bool) -> KResult<()> {
    if choices.is_empty() {
        return Err(KaiwaError::bad_frame("choose at least one option"));
    }
    if !multi && choices.len() > 1 {
        return Err(KaiwaError::bad_frame(
            "single choice: choose exactly one option",
        ));
    }
    let mut seen = BTreeSet::new();
    for &c in choices {
        if c as usize >= n_options {
            return Err(KaiwaError::bad_frame(format!("unknown option index {c}")));
        }
        if !seen.insert(c) {
            return Err(KaiwaError::bad_frame(format!("option {c} chosen twice")));
        }
    }
    Ok(())
}

fn kind_name(kind: QuestionKind) -> &'static str {
    match kind {
        QuestionKind::Choice => "choice",
        QuestionKind::Text => "text",
        QuestionKind::Number => "number",
    }
}

/// Checks an `action.respond` answer against the action it answers, before it is recorded, so
/// the tally only ever holds answers that fit. A wrong shape (a comment to a poll, a survey
/// answer count that differs from the question count, a text answer to a number question, a
/// non-finite number, an unknown or duplicate option index, zero or several choices where one
/// is expected, an empty comment or text) is `bad_frame`, as is answering plain text; an answer
/// after the deadline is `conflict`; a comment on an announcement with comments off is
/// `policy_denied`. Survey `choice` questions take exactly one option.
pub fn validate_answer(action: &Body, answer: &Answer, now_ms: i64) -> KResult<()> {
    match (action, answer) {
        (Body::Text(_), _) => Err(KaiwaError::bad_frame("a text message takes no answers")),
        (Body::Poll(p), Answer::Choice(choices)) => {
            check_choices(choices, p.options.len(), p.multi)?;
            check_open(p.deadline, now_ms)
        }
        (Body::Poll(_), _) => Err(KaiwaError::bad_frame(
            "a poll takes an answer {\"choice\": [index]}",
        )),
        (Body::Survey(s), Answer::Answers(answers)) => {
            if answers.len() != s.questions.len() {
                return Err(KaiwaError::bad_frame(format!(
                    "the survey has {} questions, got {} answers",
                    s.questions.len(),
                    answers.len()
                )));
            }
            for (i, (q, a)) in s.questions.iter().zip(answers).enumerate() {
                match (q.kind, a) {
                    (QuestionKind::Choice, SurveyAnswer::Choice(choices)) => {
                        let n = q.options.as_ref().map_or(0, Vec::len);
                        check_choices(choices, n, false).map_err(|e| in_question(i, e))?
                    }
                    (QuestionKind::Text, SurveyAnswer::Text(t)) => {
                        if blank(t) {
                            return Err(KaiwaError::bad_frame(format!(
                                "question {i}: the answer is empty"
                            )));
                        }
                    }
                    (QuestionKind::Number, SurveyAnswer::Number(x)) => {
                        if !x.is_finite() {
                            return Err(KaiwaError::bad_frame(format!(
                                "question {i}: the number is not finite"
                            )));
                        }
                    }
                    (kind, _) => {
                        return Err(KaiwaError::bad_frame(format!(
                            "question {i} takes a {} answer",
                            kind_name(kind)
                        )))
                    }
                }
            }
            check_open(s.deadline, now_ms)
        }
        (Body::Survey(_), _) => Err(KaiwaError::bad_frame(
            "a survey takes an answer {\"answers\": [...]}",
        )),
        (Body::Announcement(a), Answer::Comment(text)) => {
            if blank(text) {
                return Err(KaiwaError::bad_frame("the comment is empty"));
            }
            if !a.comments {
                return Err(KaiwaError::policy_denied(
                    "comments are switched off for this announcement",
                ));
            }
            Ok(())
        }
        (Body::Announcement(_), _) => Err(KaiwaError::bad_frame(
            "an announcement takes only {\"comment\": text}",
        )),
    }
}

/// Checks a `like` against the message: announcements with likes switched off refuse it with
/// `policy_denied`; every other message (text, polls, surveys, announcements with likes on) may
/// be liked.
pub fn can_like(body: &Body) -> KResult<()> {
    match body {
        Body::Announcement(a) if !a.likes => Err(KaiwaError::policy_denied(
            "likes are switched off for this announcement",
        )),
        _ => Ok(()),
    }
}

/// Everything users did with one message: their answers, likes and comments. The actors keep
/// one per action (persisted as MessagePack) and turn it into results with [`Tally::results`].
/// Answers and likes are keyed by user in ordered maps, so results never depend on the order in
/// which users answered; comments keep arrival order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// The latest poll or survey answer of each user.
    #[serde(default)]
    answers: BTreeMap<Id, Answer>,
    /// Users who like the message.
    #[serde(default)]
    likes: BTreeSet<Id>,
    /// Comments in arrival order.
    #[serde(default)]
    comments: Vec<CommentView>,
}

impl Tally {
    /// An empty tally, for a message nobody has reacted to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an answer already checked by [`validate_answer`]. A comment is appended to the
    /// comments; a poll or survey answer replaces the user's previous one, so a user counts once
    /// however often they answer.
    pub fn record(&mut self, user: &str, answer: Answer) {
        match answer {
            Answer::Comment(text) => self.comments.push(CommentView {
                user: user.to_string(),
                text,
            }),
            other => {
                self.answers.insert(user.to_string(), other);
            }
        }
    }

    /// Sets or clears `user`'s like and returns how many users like the message afterwards
    /// (the `ok` of `like`). Liking twice counts once.
    pub fn set_like(&mut self, user: &str, on: bool) -> u64 {
        if on {
            self.likes.insert(user.to_string());
        } else {
            self.likes.remove(user);
        }
        self.likes()
    }

    /// How many users like the message.
    pub fn likes(&self) -> u64 {
        self.likes.len() as u64
    }

    /// Whether `user` has a poll or survey answer recorded, e.g. to tell a first answer from a
    /// replacement.
    pub fn has_answered(&self, user: &str) -> bool {
        self.answers.contains_key(user)
    }

    /// Folds `other` into `self`, for `action.results` over a hierarchical group's subtree,
    /// where each group keeps its own tally of the same action. Likes are united, so a user
    /// counts once however many groups they are in; `other`'s comments are appended after
    /// `self`'s; for a user with an answer in both, the one already in `self` is kept, so
    /// callers fold the groups in a fixed order (e.g. the asked group first, then its
    /// descendants) to get deterministic results.
    pub fn merge(&mut self, other: &Tally) {
        for (user, answer) in &other.answers {
            self.answers
                .entry(user.clone())
                .or_insert_with(|| answer.clone());
        }
        self.likes.extend(other.likes.iter().cloned());
        self.comments.extend(other.comments.iter().cloned());
    }

    /// The results of the action `action` (the `ok` of `action.results` and the body of the
    /// `action_results` event). Polls count choices per option; surveys summarise each question
    /// (choice counts, texts ordered by user id, number count/min/max/mean); announcements and
    /// plain text report likes and comments. Answers that do not fit the action are skipped.
    pub fn results(&self, action: &Body) -> ActionResults {
        match action {
            Body::Poll(p) => {
                let mut counts = vec![0u64; p.options.len()];
                let mut respondents = 0;
                for answer in self.answers.values() {
                    if let Answer::Choice(choices) = answer {
                        if count_choices(choices, &mut counts) {
                            respondents += 1;
                        }
                    }
                }
                ActionResults::Poll(PollResults {
                    respondents,
                    counts,
                })
            }
            Body::Survey(s) => {
                let mut acc: Vec<QuestionAcc> = s
                    .questions
                    .iter()
                    .map(|q| match q.kind {
                        QuestionKind::Choice => {
                            QuestionAcc::Choice(vec![0; q.options.as_ref().map_or(0, Vec::len)])
                        }
                        QuestionKind::Text => QuestionAcc::Text(Vec::new()),
                        QuestionKind::Number => QuestionAcc::Number(NumberAcc::default()),
                    })
                    .collect();
                let mut respondents = 0;
                for answer in self.answers.values() {
                    let Answer::Answers(list) = answer else {
                        continue;
                    };
                    if list.len() != acc.len() {
                        continue;
                    }
                    respondents += 1;
                    for (q, a) in acc.iter_mut().zip(list) {
                        match (q, a) {
                            (QuestionAcc::Choice(counts), SurveyAnswer::Choice(choices)) => {
                                count_choices(choices, counts);
                            }
                            (QuestionAcc::Text(texts), SurveyAnswer::Text(t)) => {
                                texts.push(t.clone())
                            }
                            (QuestionAcc::Number(n), SurveyAnswer::Number(x)) if x.is_finite() => {
                                n.add(*x)
                            }
                            _ => {}
                        }
                    }
                }
                ActionResults::Survey(SurveyResults {
                    respondents,
                    questions: acc.into_iter().map(QuestionAcc::finish).collect(),
                })
            }
            Body::Announcement(_) | Body::Text(_) => {
                ActionResults::Announcement(AnnouncementResults {
                    likes: self.likes(),
                    comments: self.comments.clone(),
                })
            }
        }
    }
}

/// Adds one user's choices to `counts`, ignoring unknown and repeated indexes; true when at
/// least one choice counted.
fn count_choices(choices: &[u32], counts: &mut [u64]) -> bool {
    let picks: BTreeSet<usize> = choices
        .iter()
        .map(|&c| c as usize)
        .filter(|&c| c < counts.len())
        .collect();
    for &i in &picks {
        counts[i] += 1;
    }
    !picks.is_empty()
}

enum QuestionAcc {
    Choice(Vec<u64>),
    Text(Vec<String>),
    Number(NumberAcc),
}

#[derive(Default)]
struct NumberAcc {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl NumberAcc {
    fn add(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count += 1;
        self.sum += x;
    }
}

impl QuestionAcc {
    fn finish(self) -> QuestionResults {
        match self {
            QuestionAcc::Choice(counts) => QuestionResults::Choice { counts },
            QuestionAcc::Text(texts) => QuestionResults::Text { texts },
            QuestionAcc::Number(n) if n.count == 0 => QuestionResults::Number {
                count: 0,
                min: None,
                max: None,
                mean: None,
            },
            QuestionAcc::Number(n) => QuestionResults::Number {
                count: n.count,
                min: Some(n.min),
                max: Some(n.max),
                mean: Some(n.sum / n.count as f64),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::body::{Announcement, Poll, Survey, SurveyQuestion};
    use crate::protocol::ErrorCode;

    const NOW: i64 = 1_700_000_000_000;

    fn opts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("option {i}")).collect()
    }

    fn poll(n: usize, multi: bool, deadline: Option<i64>) -> Body {
        Body::Poll(Poll {
            question: "Lunch?".into(),
            options: opts(n),
            multi,
            deadline,
        })
    }

    fn q(kind: QuestionKind, options: Option<Vec<String>>) -> SurveyQuestion {
        SurveyQuestion {
            q: "Question".into(),
            kind,
            options,
        }
    }

    fn survey(questions: Vec<SurveyQuestion>, deadline: Option<i64>) -> Body {
        Body::Survey(Survey {
            title: "Team survey".into(),
            questions,
            deadline,
        })
    }

    fn std_survey() -> Body {
        survey(
            vec![
                q(QuestionKind::Choice, Some(opts(3))),
                q(QuestionKind::Text, None),
                q(QuestionKind::Number, None),
            ],
            None,
        )
    }

    fn ann(likes: bool, comments: bool) -> Body {
        Body::Announcement(Announcement {
            text: "Office closed Friday".into(),
            likes,
            comments,
        })
    }

    fn code(r: KResult<()>) -> ErrorCode {
        r.unwrap_err().code
    }

    fn answers(a: Vec<SurveyAnswer>) -> Answer {
        Answer::Answers(a)
    }

    fn good_survey_answer(choice: u32, text: &str, n: f64) -> Answer {
        answers(vec![
            SurveyAnswer::Choice(vec![choice]),
            SurveyAnswer::Text(text.into()),
            SurveyAnswer::Number(n),
        ])
    }

    // ---- validate_action ----

    #[test]
    fn valid_actions_pass() {
        assert!(validate_action(&Body::Text("hi".into()), NOW).is_ok());
        assert!(validate_action(&poll(2, false, None), NOW).is_ok());
        assert!(validate_action(&poll(32, true, Some(NOW + 1)), NOW).is_ok());
        assert!(validate_action(&poll(2, false, Some(NOW)), NOW).is_ok());
        assert!(validate_action(&std_survey(), NOW).is_ok());
        assert!(validate_action(&ann(true, false), NOW).is_ok());
        // An empty options list on a text question carries no options.
        let s = survey(vec![q(QuestionKind::Text, Some(vec![]))], None);
        assert!(validate_action(&s, NOW).is_ok());
        let fifty = survey(vec![q(QuestionKind::Number, None); 50], None);
        assert!(validate_action(&fifty, NOW).is_ok());
    }

    #[test]
    fn bad_polls_are_bad_frames() {
        let mut p = Poll {
            question: "  ".into(),
            options: opts(2),
            multi: false,
            deadline: None,
        };
        assert_eq!(
            code(validate_action(&Body::Poll(p.clone()), NOW)),
            ErrorCode::BadFrame
        );
        p.question = "Q".into();
        for n in [0, 1, 33] {
            p.options = opts(n);
            assert_eq!(
                code(validate_action(&Body::Poll(p.clone()), NOW)),
                ErrorCode::BadFrame
            );
        }
        p.options = vec!["a".into(), "".into()];
        assert_eq!(
            code(validate_action(&Body::Poll(p), NOW)),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn past_deadline_is_a_bad_frame() {
        assert_eq!(
            code(validate_action(&poll(2, false, Some(NOW - 1)), NOW)),
            ErrorCode::BadFrame
        );
        let s = survey(vec![q(QuestionKind::Text, None)], Some(NOW - 1));
        assert_eq!(code(validate_action(&s, NOW)), ErrorCode::BadFrame);
    }

    #[test]
    fn bad_surveys_are_bad_frames() {
        let cases = vec![
            // no questions, too many questions
            survey(vec![], None),
            survey(vec![q(QuestionKind::Text, None); 51], None),
            // choice without options, with too few or too many, with an empty one
            survey(vec![q(QuestionKind::Choice, None)], None),
            survey(vec![q(QuestionKind::Choice, Some(opts(1)))], None),
            survey(vec![q(QuestionKind::Choice, Some(opts(33)))], None),
            survey(
                vec![q(QuestionKind::Choice, Some(vec!["a".into(), " ".into()]))],
                None,
            ),
            // text and number questions must not carry options
            survey(vec![q(QuestionKind::Text, Some(opts(2)))], None),
            survey(vec![q(QuestionKind::Number, Some(opts(2)))], None),
            // empty question
            survey(
                vec![SurveyQuestion {
                    q: "".into(),
                    kind: QuestionKind::Text,
                    options: None,
                }],
                None,
            ),
            // empty title
            Body::Survey(Survey {
                title: " ".into(),
                questions: vec![q(QuestionKind::Text, None)],
                deadline: None,
            }),
        ];
        for s in cases {
            assert_eq!(code(validate_action(&s, NOW)), ErrorCode::BadFrame, "{s:?}");
        }
    }

    #[test]
    fn empty_announcement_is_a_bad_frame() {
        let a = Body::Announcement(Announcement {
            text: "".into(),
            likes: true,
            comments: true,
        });
        assert_eq!(code(validate_action(&a, NOW)), ErrorCode::BadFrame);
    }

    // ---- validate_answer ----

    #[test]
    fn valid_answers_pass() {
        assert!(validate_answer(&poll(3, false, None), &Answer::Choice(vec![2]), NOW).is_ok());
        assert!(validate_answer(&poll(3, true, None), &Answer::Choice(vec![0, 2]), NOW).is_ok());
        assert!(validate_answer(&poll(3, false, Some(NOW)), &Answer::Choice(vec![0]), NOW).is_ok());
        assert!(validate_answer(&std_survey(), &good_survey_answer(1, "fine", -2.5), NOW).is_ok());
        assert!(validate_answer(&ann(false, true), &Answer::Comment("yes".into()), NOW).is_ok());
    }

    #[test]
    fn poll_answer_errors_are_bad_frames() {
        let single = poll(3, false, None);
        let multi = poll(3, true, None);
        let bad = [
            (&single, Answer::Choice(vec![3])),         // unknown index
            (&single, Answer::Choice(vec![0, 1])),      // second choice
            (&single, Answer::Choice(vec![])),          // no choice
            (&multi, Answer::Choice(vec![])),           // no choice
            (&multi, Answer::Choice(vec![1, 1])),       // duplicate
            (&multi, Answer::Choice(vec![0, 7])),       // unknown index
            (&single, Answer::Comment("hm".into())),    // wrong shape
            (&single, good_survey_answer(0, "x", 1.0)), // wrong shape
        ];
        for (p, a) in bad {
            assert_eq!(
                code(validate_answer(p, &a, NOW)),
                ErrorCode::BadFrame,
                "{a:?}"
            );
        }
    }

    #[test]
    fn survey_answer_errors_are_bad_frames() {
        let s = std_survey();
        let bad = [
            // answer count differs from question count
            answers(vec![SurveyAnswer::Choice(vec![0])]),
            answers(vec![]),
            // text answer to the number question
            answers(vec![
                SurveyAnswer::Choice(vec![0]),
                SurveyAnswer::Text("a".into()),
                SurveyAnswer::Text("3".into()),
            ]),
            // number answer to the choice question
            answers(vec![
                SurveyAnswer::Number(0.0),
                SurveyAnswer::Text("a".into()),
                SurveyAnswer::Number(1.0),
            ]),
            // non-finite numbers
            good_survey_answer(0, "a", f64::NAN),
            good_survey_answer(0, "a", f64::INFINITY),
            // unknown option, two options, no option
            good_survey_answer(3, "a", 1.0),
            answers(vec![
                SurveyAnswer::Choice(vec![0, 1]),
                SurveyAnswer::Text("a".into()),
                SurveyAnswer::Number(1.0),
            ]),
            answers(vec![
                SurveyAnswer::Choice(vec![]),
                SurveyAnswer::Text("a".into()),
                SurveyAnswer::Number(1.0),
            ]),
            // empty text
            good_survey_answer(0, " ", 1.0),
            // wrong shape altogether
            Answer::Choice(vec![0]),
            Answer::Comment("hi".into()),
        ];
        for a in bad {
            assert_eq!(
                code(validate_answer(&s, &a, NOW)),
                ErrorCode::BadFrame,
                "{a:?}"
            );
        }
    }

    #[test]
    fn announcement_answer_errors() {
        assert_eq!(
            code(validate_answer(
                &ann(true, true),
                &Answer::Choice(vec![0]),
                NOW
            )),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(validate_answer(
                &ann(true, true),
                &Answer::Comment("".into()),
                NOW
            )),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(validate_answer(
                &ann(true, false),
                &Answer::Comment("hi".into()),
                NOW
            )),
            ErrorCode::PolicyDenied
        );
    }

    #[test]
    fn answering_text_is_a_bad_frame() {
        let t = Body::Text("hi".into());
        for a in [Answer::Choice(vec![0]), Answer::Comment("x".into())] {
            assert_eq!(code(validate_answer(&t, &a, NOW)), ErrorCode::BadFrame);
        }
    }

    #[test]
    fn answer_after_deadline_is_a_conflict() {
        assert_eq!(
            code(validate_answer(
                &poll(2, false, Some(NOW - 1)),
                &Answer::Choice(vec![0]),
                NOW
            )),
            ErrorCode::Conflict
        );
        let s = survey(vec![q(QuestionKind::Number, None)], Some(NOW - 1));
        assert_eq!(
            code(validate_answer(
                &s,
                &answers(vec![SurveyAnswer::Number(1.0)]),
                NOW
            )),
            ErrorCode::Conflict
        );
    }

    // ---- can_like ----

    #[test]
    fn likes_follow_the_announcement_switch() {
        assert!(can_like(&Body::Text("hi".into())).is_ok());
        assert!(can_like(&poll(2, false, None)).is_ok());
        assert!(can_like(&std_survey()).is_ok());
        assert!(can_like(&ann(true, false)).is_ok());
        assert_eq!(code(can_like(&ann(false, true))), ErrorCode::PolicyDenied);
    }

    // ---- Tally ----

    #[test]
    fn poll_tally_counts_each_user_once_and_replaces_answers() {
        let p = poll(3, false, None);
        let mut t = Tally::new();
        t.record("u1", Answer::Choice(vec![0]));
        t.record("u2", Answer::Choice(vec![1]));
        t.record("u1", Answer::Choice(vec![2])); // replaces u1's first answer
        t.record("u1", Answer::Choice(vec![2]));
        assert!(t.has_answered("u1"));
        assert!(!t.has_answered("u3"));
        assert_eq!(
            t.results(&p),
            ActionResults::Poll(PollResults {
                respondents: 2,
                counts: vec![0, 1, 1],
            })
        );
    }

    #[test]
    fn multi_poll_counts_every_choice() {
        let p = poll(3, true, None);
        let mut t = Tally::new();
        t.record("u1", Answer::Choice(vec![0, 2]));
        t.record("u2", Answer::Choice(vec![2]));
        assert_eq!(
            t.results(&p),
            ActionResults::Poll(PollResults {
                respondents: 2,
                counts: vec![1, 0, 2],
            })
        );
    }

    #[test]
    fn empty_tally_has_empty_results() {
        let t = Tally::new();
        assert_eq!(
            t.results(&poll(2, false, None)),
            ActionResults::Poll(PollResults {
                respondents: 0,
                counts: vec![0, 0],
            })
        );
        assert_eq!(
            t.results(&std_survey()),
            ActionResults::Survey(SurveyResults {
                respondents: 0,
                questions: vec![
                    QuestionResults::Choice {
                        counts: vec![0, 0, 0]
                    },
                    QuestionResults::Text { texts: vec![] },
                    QuestionResults::Number {
                        count: 0,
                        min: None,
                        max: None,
                        mean: None,
                    },
                ],
            })
        );
        assert_eq!(
            t.results(&ann(true, true)),
            ActionResults::Announcement(AnnouncementResults {
                likes: 0,
                comments: vec![],
            })
        );
    }

    #[test]
    fn survey_tally_summarises_each_question() {
        let s = std_survey();
        let mut t = Tally::new();
        t.record("u2", good_survey_answer(1, "bravo", 4.0));
        t.record("u1", good_survey_answer(0, "alpha", 1.0));
        t.record("u3", good_survey_answer(1, "charlie", 2.5));
        t.record("u3", good_survey_answer(1, "charlie", 1.0)); // replaces
        assert_eq!(
            t.results(&s),
            ActionResults::Survey(SurveyResults {
                respondents: 3,
                questions: vec![
                    QuestionResults::Choice {
                        counts: vec![1, 2, 0]
                    },
                    QuestionResults::Text {
                        texts: vec!["alpha".into(), "bravo".into(), "charlie".into()]
                    },
                    QuestionResults::Number {
                        count: 3,
                        min: Some(1.0),
                        max: Some(4.0),
                        mean: Some(2.0),
                    },
                ],
            })
        );
    }

    #[test]
    fn results_do_not_depend_on_answer_order() {
        let s = std_survey();
        let all = [
            ("u1", good_survey_answer(0, "a", 0.1)),
            ("u2", good_survey_answer(1, "b", 0.2)),
            ("u3", good_survey_answer(2, "c", 0.3)),
            ("u4", good_survey_answer(1, "d", 1e9)),
        ];
        let mut forward = Tally::new();
        for (u, a) in all.iter().cloned() {
            forward.record(u, a);
        }
        let mut backward = Tally::new();
        for (u, a) in all.iter().rev().cloned() {
            backward.record(u, a);
        }
        assert_eq!(forward.results(&s), backward.results(&s));
        assert_eq!(forward, backward);
    }

    #[test]
    fn likes_are_a_set() {
        let mut t = Tally::new();
        assert_eq!(t.set_like("u1", true), 1);
        assert_eq!(t.set_like("u1", true), 1);
        assert_eq!(t.set_like("u2", true), 2);
        assert_eq!(t.set_like("u1", false), 1);
        assert_eq!(t.set_like("u9", false), 1);
        assert_eq!(t.likes(), 1);
    }

    #[test]
    fn comments_accumulate_in_arrival_order() {
        let a = ann(true, true);
        let mut t = Tally::new();
        t.record("u2", Answer::Comment("first".into()));
        t.record("u1", Answer::Comment("second".into()));
        t.record("u2", Answer::Comment("third".into()));
        t.set_like("u1", true);
        let view = |u: &str, s: &str| CommentView {
            user: u.into(),
            text: s.into(),
        };
        assert_eq!(
            t.results(&a),
            ActionResults::Announcement(AnnouncementResults {
                likes: 1,
                comments: vec![
                    view("u2", "first"),
                    view("u1", "second"),
                    view("u2", "third")
                ],
            })
        );
        // A liked text message reports its likes the same way.
        assert_eq!(t.results(&Body::Text("hi".into())), t.results(&a),);
    }

    #[test]
    fn answers_that_do_not_fit_are_skipped() {
        let p = poll(2, false, None);
        let mut t = Tally::new();
        t.record("u1", good_survey_answer(0, "x", 1.0));
        t.record("u2", Answer::Choice(vec![5]));
        t.record("u3", Answer::Choice(vec![1]));
        assert_eq!(
            t.results(&p),
            ActionResults::Poll(PollResults {
                respondents: 1,
                counts: vec![0, 1],
            })
        );
        let s = std_survey();
        let mut t = Tally::new();
        t.record("u4", answers(vec![SurveyAnswer::Number(1.0)]));
        t.record("u5", Answer::Choice(vec![0]));
        assert_eq!(
            t.results(&s),
            Tally::new().results(&s),
            "wrong-length survey answers count for nothing"
        );
    }

    #[test]
    fn merge_counts_a_user_once_across_groups() {
        let p = poll(2, false, None);
        let mut root = Tally::new();
        root.record("u1", Answer::Choice(vec![0]));
        root.set_like("u1", true);
        let mut child = Tally::new();
        child.record("u1", Answer::Choice(vec![1]));
        child.record("u2", Answer::Choice(vec![1]));
        child.set_like("u1", true);
        child.set_like("u2", true);
        root.merge(&child);
        assert_eq!(
            root.results(&p),
            ActionResults::Poll(PollResults {
                respondents: 2,
                counts: vec![1, 1],
            })
        );
        assert_eq!(root.likes(), 2);
    }

    #[test]
    fn tally_round_trips_as_msgpack() {
        let mut t = Tally::new();
        t.record("u1", good_survey_answer(0, "x", 1.5));
        t.record("u2", Answer::Choice(vec![1, 0]));
        t.record("u3", Answer::Comment("hi".into()));
        t.set_like("u3", true);
        let bytes = rmp_serde::to_vec_named(&t).unwrap();
        let back: Tally = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, t);
        // A tally stored before any field existed still loads.
        let empty = rmp_serde::to_vec_named(&serde_json::json!({})).unwrap();
        let back: Tally = rmp_serde::from_slice(&empty).unwrap();
        assert_eq!(back, Tally::new());
    }
}
