//! Generated text → content and tool calls, incrementally.
//!
//! [`ToolCallParser`] is fed the text of one choice as it is generated and yields
//! [`ToolEvent`]s in the order OpenAI streams them: content, then per call its start (id and
//! name) and fragments of its arguments. Text that might be the start of the format's
//! trigger is held back until it is known not to be. [`parse_output`] runs the same parser
//! over a whole text (non-streaming responses), so both paths agree byte for byte.
//!
//! The calls are read with a JSON-aware scanner, not a pattern split: a literal
//! `</tool_call>` or `]` inside a string argument is part of the string. Each scan starts
//! again at the trigger (calls are short), which keeps the parser a pure function of the text
//! seen so far.

use super::scan::{RegionState, ScannedCall, scan_region};
use super::{ToolCall, ToolFormat, new_call_id};

/// What the parser hands on, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Ordinary text.
    Content(String),
    /// A call begins: its index among this choice's calls, a fresh id and the name.
    CallStart { index: usize, id: String, name: String },
    /// More of a call's arguments (JSON text; all fragments of a call concatenated parse).
    Arguments { index: usize, fragment: String },
}

/// How a choice's text ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Calls whose JSON closed and parsed.
    pub complete_calls: usize,
    /// A call was started but never finished (generation cut, or malformed text).
    pub incomplete_call: bool,
}

impl Outcome {
    /// OpenAI's `finish_reason` is `tool_calls` when this holds.
    pub fn has_calls(&self) -> bool {
        self.complete_calls > 0 && !self.incomplete_call
    }
}

struct CallProgress {
    /// Bytes of the arguments value already handed on.
    arguments_sent: usize,
    complete: bool,
}

/// Where the calls that follow a trigger start in the buffer.
struct Region {
    start: usize,
    /// Index of the region's first call among all calls of the choice.
    first_call: usize,
}

pub struct ToolCallParser {
    format: ToolFormat,
    buf: String,
    /// Bytes of `buf` already handed on (as content, or taken by calls).
    emitted: usize,
    region: Option<Region>,
    calls: Vec<CallProgress>,
    /// After malformed call text, everything else is plain content.
    plain: bool,
    /// The text ended inside a call (or right after a trigger).
    unfinished: bool,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        ToolCallParser {
            format,
            buf: String::new(),
            emitted: 0,
            region: None,
            calls: Vec::new(),
            plain: false,
            unfinished: false,
        }
    }

    /// Feeds the next piece of generated text.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut events = Vec::new();
        self.advance(&mut events, false);
        events
    }

    /// The text is complete: releases held-back text and says how it went.
    pub fn finish(&mut self) -> (Vec<ToolEvent>, Outcome) {
        let mut events = Vec::new();
        self.advance(&mut events, true);
        let outcome = Outcome {
            complete_calls: self.calls.iter().filter(|c| c.complete).count(),
            incomplete_call: self.unfinished || self.calls.iter().any(|c| !c.complete),
        };
        (events, outcome)
    }

    fn advance(&mut self, events: &mut Vec<ToolEvent>, end: bool) {
        loop {
            if self.plain {
                self.content(events, self.buf.len(), end);
                return;
            }
            if let Some(region) = &self.region {
                let start = region.start;
                let first_call = region.first_call;
                let scan = scan_region(self.format, &self.buf[start..]);
                self.report_calls(events, start, first_call, &scan.calls);
                match scan.state {
                    RegionState::Open => {
                        if end {
                            self.unfinished = scan.calls.last().is_none_or(|c| !c.complete);
                            self.region = None;
                        }
                        return;
                    }
                    RegionState::Closed(offset) => {
                        self.emitted = start + offset;
                        self.region = None;
                    }
                    RegionState::Broken(offset) => {
                        // Not calls after all: the rest is text, and stays text. Calls already
                        // announced from the malformed part count as unfinished, so that a
                        // stream does not end as `tool_calls` with calls the whole text lacks.
                        for progress in self.calls.iter_mut().skip(first_call + scan.calls.len()) {
                            progress.complete = false;
                        }
                        self.emitted = start + offset;
                        self.region = None;
                        self.plain = true;
                    }
                }
                continue;
            }
            let trigger = self.format.trigger();
            match self.buf[self.emitted..].find(trigger) {
                Some(at) => {
                    let start = self.emitted + at;
                    self.content(events, start, true);
                    self.emitted = start;
                    self.region = Some(Region { start, first_call: self.calls.len() });
                }
                None => {
                    // Hold back a tail that could still become the trigger.
                    let rest = &self.buf[self.emitted..];
                    let held = if end {
                        0
                    } else {
                        (1..trigger.len().min(rest.len() + 1))
                            .rev()
                            .find(|&k| rest.ends_with(&trigger[..k]))
                            .unwrap_or(0)
                    };
                    self.content(events, self.buf.len() - held, end);
                    return;
                }
            }
        }
    }

    /// Hands on `buf[emitted..upto]` as content. After a call, whitespace alone is held
    /// (it separates calls) and dropped at the end.
    fn content(&mut self, events: &mut Vec<ToolEvent>, upto: usize, end: bool) {
        let text = &self.buf[self.emitted..upto];
        if text.is_empty() {
            return;
        }
        if !self.calls.is_empty() && text.trim().is_empty() {
            if end {
                self.emitted = upto;
            }
            return;
        }
        events.push(ToolEvent::Content(text.to_string()));
        self.emitted = upto;
    }

    fn report_calls(&mut self, events: &mut Vec<ToolEvent>, start: usize, first_call: usize, scanned: &[ScannedCall]) {
        for (k, call) in scanned.iter().enumerate() {
            let index = first_call + k;
            if index == self.calls.len() {
                // A call is announced once its name is known.
                let Some(name) = &call.name else { return };
                self.calls.push(CallProgress { arguments_sent: 0, complete: false });
                events.push(ToolEvent::CallStart { index, id: new_call_id(), name: name.clone() });
            }
            let progress = &mut self.calls[index];
            if let Some((from, to)) = call.arguments
                && to - from > progress.arguments_sent
            {
                let fragment = &self.buf[start + from + progress.arguments_sent..start + to];
                events.push(ToolEvent::Arguments { index, fragment: fragment.to_string() });
                progress.arguments_sent = to - from;
            }
            if call.complete && !progress.complete {
                progress.complete = true;
                if call.arguments.is_none() {
                    events.push(ToolEvent::Arguments { index, fragment: "{}".into() });
                }
            }
        }
    }
}

/// Content and calls of a whole generated text. A call left unfinished (generation cut by
/// `max_tokens`, or malformed) means no call is claimed: the raw text is the content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    /// The text outside the calls; `None` when there is none (or only whitespace).
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

pub fn parse_output(format: ToolFormat, text: &str) -> ParsedOutput {
    let mut parser = ToolCallParser::new(format);
    let mut events = parser.push(text);
    let (rest, outcome) = parser.finish();
    events.extend(rest);
    if outcome.incomplete_call {
        return ParsedOutput { content: (!text.is_empty()).then(|| text.to_string()), calls: Vec::new() };
    }
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for event in events {
        match event {
            ToolEvent::Content(text) => content.push_str(&text),
            ToolEvent::CallStart { id, name, .. } => calls.push(ToolCall { id, name, arguments: String::new() }),
            ToolEvent::Arguments { index, fragment } => calls[index].arguments.push_str(&fragment),
        }
    }
    ParsedOutput { content: (!content.trim().is_empty()).then_some(content), calls }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
