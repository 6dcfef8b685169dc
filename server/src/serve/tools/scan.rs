//! The JSON-aware scanner behind [`super::parse::ToolCallParser`]: reads the calls of one
//! format from a region of text that starts at the format's trigger, as far as the text goes.
//! It tracks JSON strings and nesting, so a `</tool_call>` or `]` inside a string is part of
//! the string; whether a value really parses is left to serde_json on its span.

use super::ToolFormat;

#[derive(Debug, Default, PartialEq)]
pub(super) struct ScannedCall {
    /// Known once its JSON string is complete.
    pub name: Option<String>,
    /// The arguments value's span so far (relative to the region), growing while it streams.
    pub arguments: Option<(usize, usize)>,
    /// The object closed, the name is known and the arguments parse.
    pub complete: bool,
}

#[derive(Debug, PartialEq)]
pub(super) enum RegionState {
    /// More text may continue the calls.
    Open,
    /// The calls ended at this offset; text after it is ordinary text.
    Closed(usize),
    /// Malformed from this offset (the end of the last complete call, or the trigger).
    Broken(usize),
}

#[derive(Debug, PartialEq)]
pub(super) struct RegionScan {
    pub calls: Vec<ScannedCall>,
    pub state: RegionState,
}

/// Why a scan stopped early.
enum Stop {
    /// The text ends before the construct does.
    More,
    /// The text is not what the format expects.
    Bad,
}

type Scan<T> = Result<T, Stop>;

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// Consumes `lit`; `More` when the text ends inside it.
    fn literal(&mut self, lit: &str) -> Scan<()> {
        let rest = self.rest();
        if rest.starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            Err(Stop::More)
        } else {
            Err(Stop::Bad)
        }
    }

    /// The end of the JSON string that starts here (just past its closing quote).
    fn string_end(&self, from: usize) -> Scan<usize> {
        let bytes = self.s.as_bytes();
        let mut j = from + 1;
        while j < bytes.len() {
            match bytes[j] {
                b'\\' => j += 2,
                b'"' => return Ok(j + 1),
                _ => j += 1,
            }
        }
        Err(Stop::More)
    }

    /// Skips one JSON value structurally (strings, nesting); whether it really parses is
    /// checked by serde_json on the span.
    fn value(&mut self) -> Scan<()> {
        let bytes = self.s.as_bytes();
        match self.peek() {
            None => Err(Stop::More),
            Some(b'"') => {
                self.i = self.string_end(self.i)?;
                Ok(())
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                let mut j = self.i;
                while j < bytes.len() {
                    match bytes[j] {
                        b'"' => {
                            j = self.string_end(j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i = j + 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                Err(Stop::More)
            }
            Some(_) => {
                let start = self.i;
                let mut j = self.i;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'+' | b'-' | b'.')) {
                    j += 1;
                }
                if j == start {
                    Err(Stop::Bad)
                } else if j == bytes.len() {
                    // A number or literal may go on.
                    Err(Stop::More)
                } else {
                    self.i = j;
                    Ok(())
                }
            }
        }
    }

    /// One call object: `{"name": "...", "<arguments key>": {...}}` (keys in any order,
    /// others ignored). Fills `call` as far as the text goes.
    fn call_object(&mut self, arguments_key: &str, call: &mut ScannedCall) -> Scan<()> {
        self.literal("{")?;
        self.skip_ws();
        loop {
            if self.peek() != Some(b'"') {
                return Err(if self.at_end() { Stop::More } else { Stop::Bad });
            }
            let key_end = self.string_end(self.i)?;
            let key: String = serde_json::from_str(&self.s[self.i..key_end]).map_err(|_| Stop::Bad)?;
            self.i = key_end;
            self.skip_ws();
            self.literal(":")?;
            self.skip_ws();
            let value_start = self.i;
            let is_arguments = key == arguments_key || key == "arguments" || key == "parameters";
            // A repeated name or arguments would replace what a stream has already sent
            // (the whole text keeps the last): not a call.
            if key == "name" && call.name.is_some() || is_arguments && call.arguments.is_some() {
                return Err(Stop::Bad);
            }
            if is_arguments {
                call.arguments = Some((value_start, self.s.len()));
            }
            self.value()?;
            let raw = &self.s[value_start..self.i];
            if key == "name" {
                call.name = Some(serde_json::from_str(raw).map_err(|_| Stop::Bad)?);
            } else if is_arguments {
                serde_json::from_str::<serde_json::Value>(raw).map_err(|_| Stop::Bad)?;
                call.arguments = Some((value_start, self.i));
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    if call.name.is_none() {
                        return Err(Stop::Bad);
                    }
                    call.complete = true;
                    return Ok(());
                }
                None => return Err(Stop::More),
                Some(_) => return Err(Stop::Bad),
            }
        }
    }
}

/// Scans the calls that start at the beginning of `s` (at the trigger).
pub(super) fn scan_region(format: ToolFormat, s: &str) -> RegionScan {
    let mut calls = Vec::new();
    let mut cursor = Cursor { s, i: 0 };
    // Calls complete with their closing text, and the offset after them: where text resumes
    // if the rest is malformed.
    let mut good = (0, 0);
    let result = scan_calls(format, &mut cursor, &mut calls, &mut good);
    let state = match result {
        Ok(end) => RegionState::Closed(end),
        Err(Stop::More) => RegionState::Open,
        Err(Stop::Bad) => {
            // Calls in the malformed part are not calls.
            calls.truncate(good.0);
            RegionState::Broken(good.1)
        }
    };
    RegionScan { calls, state }
}

/// The format's grammar of a calls region; returns where it ends.
/// `good` is updated to (calls, offset) after each call that is complete with its closing text.
fn scan_calls(
    format: ToolFormat,
    c: &mut Cursor<'_>,
    calls: &mut Vec<ScannedCall>,
    good: &mut (usize, usize),
) -> Scan<usize> {
    let key = format.arguments_key();
    let one = |c: &mut Cursor<'_>, calls: &mut Vec<ScannedCall>| -> Scan<()> {
        calls.push(ScannedCall::default());
        let call = calls.last_mut().expect("just pushed");
        c.call_object(key, call)
    };
    match format {
        ToolFormat::Hermes => loop {
            c.literal("<tool_call>")?;
            c.skip_ws();
            one(c, calls)?;
            c.skip_ws();
            c.literal("</tool_call>")?;
            *good = (calls.len(), c.i);
            let end = c.i;
            c.skip_ws();
            if c.at_end() {
                return Err(Stop::More);
            }
            match c.literal("<tool_call>") {
                Ok(()) => c.i -= "<tool_call>".len(),
                Err(Stop::More) => return Err(Stop::More),
                Err(Stop::Bad) => return Ok(end),
            }
        },
        ToolFormat::Mistral => {
            c.literal("[TOOL_CALLS]")?;
            c.skip_ws();
            c.literal("[")?;
            c.skip_ws();
            loop {
                one(c, calls)?;
                *good = (calls.len(), c.i);
                c.skip_ws();
                match c.peek() {
                    Some(b',') => {
                        c.i += 1;
                        c.skip_ws();
                    }
                    Some(b']') => return Ok(c.i + 1),
                    None => return Err(Stop::More),
                    Some(_) => return Err(Stop::Bad),
                }
            }
        }
        ToolFormat::Llama3Json => loop {
            one(c, calls)?;
            *good = (calls.len(), c.i);
            let end = c.i;
            c.skip_ws();
            match c.peek() {
                Some(b';') => {
                    c.i += 1;
                    c.skip_ws();
                    if c.at_end() {
                        return Err(Stop::More);
                    }
                }
                None => return Err(Stop::More),
                Some(_) => return Ok(end),
            }
        },
    }
}
