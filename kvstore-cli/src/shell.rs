//! `shell`: the interactive prompt.
//!
//! Commands (also `help` inside the shell):
//!
//! | line | does |
//! | --- | --- |
//! | `set` | asks for the key, then the value, each on its own line |
//! | `set KEY` | asks for the value |
//! | `set KEY VALUE...` | stores the rest of the line as the value |
//! | `get` / `get KEY...` | asks for the key / prints each value on a line |
//! | `delete` | deletes every key and value, after a `y` on the next line |
//! | `delete KEY...` | deletes those keys: `DELETED` or `NOT-FOUND` each |
//! | `help`, `exit` | |
//!
//! The same loop serves a terminal ([`run_terminal`], with rustyline line
//! editing and history) and a pipe or file ([`run`], prompts only when
//! asked for). End of input ends the shell cleanly.

use std::io::{BufRead, Write};

use kvstore_net::Client;

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

/// The prompt for a command.
pub const PROMPT: &str = "kvstore> ";

/// The text `help` prints.
pub const HELP: &str = "\
commands:
  set                 ask for a key, then a value, and store it
  set KEY VALUE       store VALUE (the rest of the line) under KEY
  get                 ask for a key and print its value
  get KEY...          print the value of each KEY (empty when missing)
  delete KEY...       delete each KEY: DELETED or NOT-FOUND
  delete              delete every key and value (asks for confirmation)
  help                this text
  exit                leave the shell (end of input does too); data stays
";

/// Where the shell's lines come from.
pub trait LineSource {
    /// The next line without its line ending, showing `prompt` where that
    /// makes sense; `None` at end of input.
    ///
    /// # Errors
    ///
    /// [`Error::Local`] when the input cannot be read.
    fn read_line(&mut self, prompt: &str) -> Result<Option<Vec<u8>>>;
}

/// Lines from a reader; prompts go to a writer only when `interactive`.
pub struct ReaderSource<R, W> {
    reader: R,
    prompts: Option<W>,
}

impl<R: BufRead, W: Write> ReaderSource<R, W> {
    /// Lines from `reader`; when `prompts` is `Some`, each prompt is written
    /// and flushed there before a line is read.
    pub fn new(reader: R, prompts: Option<W>) -> Self {
        ReaderSource { reader, prompts }
    }
}

impl<R: BufRead, W: Write> LineSource for ReaderSource<R, W> {
    fn read_line(&mut self, prompt: &str) -> Result<Option<Vec<u8>>> {
        if let Some(out) = &mut self.prompts {
            out.write_all(prompt.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Error::local("write the prompt", e))?;
        }
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::local("read the shell input", e))?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        Ok(Some(line))
    }
}

/// Lines from the terminal through rustyline: line editing and history.
pub struct TerminalSource {
    editor: rustyline::DefaultEditor,
}

impl TerminalSource {
    /// A line editor on the terminal.
    ///
    /// # Errors
    ///
    /// [`Error::Local`] when the terminal cannot be set up.
    pub fn new() -> Result<TerminalSource> {
        let editor = rustyline::DefaultEditor::new().map_err(|e| {
            Error::local("set up the terminal", std::io::Error::other(e.to_string()))
        })?;
        Ok(TerminalSource { editor })
    }
}

impl LineSource for TerminalSource {
    fn read_line(&mut self, prompt: &str) -> Result<Option<Vec<u8>>> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => {
                if prompt == PROMPT && !line.trim().is_empty() {
                    // History only for commands, not for keys and values.
                    let _ = self.editor.add_history_entry(line.as_str());
                }
                Ok(Some(line.into_bytes()))
            }
            // Ctrl+C abandons the line, as in a shell.
            Err(ReadlineError::Interrupted) => Ok(Some(Vec::new())),
            Err(ReadlineError::Eof) => Ok(None),
            Err(ReadlineError::Io(e)) => Err(Error::local("read the terminal", e)),
            Err(e) => Err(Error::local(
                "read the terminal",
                std::io::Error::other(e.to_string()),
            )),
        }
    }
}

/// Runs the shell over `client` with lines from `input` and output to
/// `output`. With `interactive`, prompts (`kvstore> `, `key: `, `value: `)
/// are written to `output` too; without it (a script on a pipe), only the
/// results are.
///
/// # Errors
///
/// When the connection to the server is lost or the input or output
/// fails. A request the server rejects only prints an `error: ...` line
/// and the shell goes on.
pub fn run<R: BufRead, W: Write>(
    client: &mut Client,
    endpoint: &Endpoint,
    input: R,
    mut output: W,
    interactive: bool,
) -> Result<()> {
    if interactive {
        // Prompts and results share one writer: write through a shared cell.
        let out = std::cell::RefCell::new(&mut output);
        let mut source = ReaderSource::new(input, Some(SharedWriter(&out)));
        Shell::new(client, endpoint, interactive).run(&mut source, &mut SharedWriter(&out))
    } else {
        let mut source = ReaderSource::new(input, None::<std::io::Sink>);
        Shell::new(client, endpoint, interactive).run(&mut source, &mut output)
    }
}

/// Runs the shell on the terminal (rustyline), results to stdout.
///
/// # Errors
///
/// As [`run`].
pub fn run_terminal(client: &mut Client, endpoint: &Endpoint) -> Result<()> {
    let mut source = TerminalSource::new()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    Shell::new(client, endpoint, true).run(&mut source, &mut out)
}

struct SharedWriter<'a, 'w, W: Write>(&'a std::cell::RefCell<&'w mut W>);

impl<W: Write> Write for SharedWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// The command loop, independent of where lines come from.
pub struct Shell<'a> {
    client: &'a mut Client,
    endpoint: &'a Endpoint,
    interactive: bool,
}

enum Flow {
    Continue,
    Exit,
}

impl<'a> Shell<'a> {
    /// A shell over `client`, connected to `endpoint` (named in errors);
    /// `interactive` adds hints meant for a person (such as `(empty)` for an
    /// empty value).
    pub fn new(client: &'a mut Client, endpoint: &'a Endpoint, interactive: bool) -> Shell<'a> {
        Shell {
            client,
            endpoint,
            interactive,
        }
    }

    /// Reads and runs commands until `exit` or the end of input.
    ///
    /// # Errors
    ///
    /// As [`run`].
    pub fn run(&mut self, input: &mut dyn LineSource, out: &mut dyn Write) -> Result<()> {
        while let Some(line) = input.read_line(PROMPT)? {
            let flow = match self.command(&line, input, out) {
                Ok(flow) => flow,
                Err(err) if err.is_connection_lost() => return Err(err),
                Err(err @ Error::Local { .. }) => return Err(err),
                Err(err) => {
                    writeln!(out, "error: {err}").map_err(write_err)?;
                    Flow::Continue
                }
            };
            out.flush().map_err(write_err)?;
            if let Flow::Exit = flow {
                break;
            }
        }
        Ok(())
    }

    fn command(
        &mut self,
        line: &[u8],
        input: &mut dyn LineSource,
        out: &mut dyn Write,
    ) -> Result<Flow> {
        let (word, rest) = split_word(line);
        let word = String::from_utf8_lossy(word).to_ascii_lowercase();
        match word.as_str() {
            "" => Ok(Flow::Continue),
            "exit" | "quit" => Ok(Flow::Exit),
            "help" | "?" => {
                out.write_all(HELP.as_bytes()).map_err(write_err)?;
                Ok(Flow::Continue)
            }
            "set" => self.set(rest, input, out),
            "get" => self.get(rest, input, out),
            "delete" => self.delete(rest, input, out),
            _ => Err(Error::Usage(format!(
                "unknown command `{word}`; type help for the commands"
            ))),
        }
    }

    fn set(
        &mut self,
        rest: &[u8],
        input: &mut dyn LineSource,
        out: &mut dyn Write,
    ) -> Result<Flow> {
        let (key, value_part) = split_word(rest);
        let key = if key.is_empty() {
            match read_key(input)? {
                Some(key) => key,
                None => return Ok(Flow::Exit),
            }
        } else {
            key.to_vec()
        };
        let value = if value_part.is_empty() {
            // `set` or `set KEY`: the value comes on its own line.
            match input.read_line("value: ")? {
                Some(value) => value,
                None => return Ok(Flow::Exit),
            }
        } else {
            value_part.to_vec()
        };
        self.client
            .set(&key, &value)
            .map_err(|e| self.endpoint.error(e))?;
        writeln!(out, "STORED").map_err(write_err)?;
        Ok(Flow::Continue)
    }

    fn get(
        &mut self,
        rest: &[u8],
        input: &mut dyn LineSource,
        out: &mut dyn Write,
    ) -> Result<Flow> {
        let keys: Vec<Vec<u8>> = if rest.is_empty() {
            match read_key(input)? {
                Some(key) => vec![key],
                None => return Ok(Flow::Exit),
            }
        } else {
            words(rest).map(<[u8]>::to_vec).collect()
        };
        let values = self
            .client
            .get_many(&keys)
            .map_err(|e| self.endpoint.error(e))?;
        for value in values {
            if value.is_empty() && self.interactive {
                writeln!(out, "(empty)").map_err(write_err)?;
            } else {
                out.write_all(&value)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(write_err)?;
            }
        }
        Ok(Flow::Continue)
    }

    fn delete(
        &mut self,
        rest: &[u8],
        input: &mut dyn LineSource,
        out: &mut dyn Write,
    ) -> Result<Flow> {
        if rest.is_empty() {
            let answer = match input.read_line("delete every key and value? [y/N] ")? {
                Some(answer) => answer,
                None => return Ok(Flow::Exit),
            };
            let answer = String::from_utf8_lossy(&answer).trim().to_ascii_lowercase();
            if answer == "y" || answer == "yes" {
                self.client.clear().map_err(|e| self.endpoint.error(e))?;
                writeln!(out, "DELETED").map_err(write_err)?;
            } else {
                writeln!(out, "not deleted").map_err(write_err)?;
            }
            return Ok(Flow::Continue);
        }
        for key in words(rest) {
            let existed = self
                .client
                .delete(key)
                .map_err(|e| self.endpoint.error(e))?;
            writeln!(out, "{}", if existed { "DELETED" } else { "NOT-FOUND" })
                .map_err(write_err)?;
        }
        Ok(Flow::Continue)
    }
}

/// Asks for a key on its own line; `None` at end of input.
fn read_key(input: &mut dyn LineSource) -> Result<Option<Vec<u8>>> {
    match input.read_line("key: ")? {
        None => Ok(None),
        Some(line) => {
            let key = trim(&line);
            if key.iter().any(u8::is_ascii_whitespace) {
                return Err(Error::Usage("a key cannot contain whitespace".to_string()));
            }
            Ok(Some(key.to_vec()))
        }
    }
}

fn write_err(e: std::io::Error) -> Error {
    Error::local("write the shell output", e)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

/// The first whitespace-separated word of `s` and the rest after the
/// whitespace that follows it (the rest keeps inner and trailing spaces).
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let s = &s[start..];
    let end = s
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(s.len());
    let (word, rest) = s.split_at(end);
    let rest_start = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    (word, &rest[rest_start..])
}

fn words(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_word_keeps_the_rest_verbatim() {
        assert_eq!(
            split_word(b"  set  k  a b \r"),
            (&b"set"[..], &b"k  a b \r"[..])
        );
        assert_eq!(split_word(b"k"), (&b"k"[..], &b""[..]));
        assert_eq!(split_word(b"   "), (&b""[..], &b""[..]));
    }

    #[test]
    fn reader_source_strips_line_endings_and_ends_at_eof() {
        let mut src = ReaderSource::new(&b"one\r\ntwo\nthree"[..], None::<Vec<u8>>);
        assert_eq!(src.read_line("> ").unwrap(), Some(b"one".to_vec()));
        assert_eq!(src.read_line("> ").unwrap(), Some(b"two".to_vec()));
        assert_eq!(src.read_line("> ").unwrap(), Some(b"three".to_vec()));
        assert_eq!(src.read_line("> ").unwrap(), None);
    }

    #[test]
    fn reader_source_prompts_only_when_asked() {
        let mut prompts = Vec::new();
        let mut src = ReaderSource::new(&b"x\n"[..], Some(&mut prompts));
        src.read_line("key: ").unwrap();
        assert_eq!(prompts, b"key: ");
    }

    #[test]
    fn trim_and_words() {
        assert_eq!(trim(b"  k \t"), b"k");
        assert_eq!(trim(b"   "), b"");
        let w: Vec<&[u8]> = words(b" a  b\tc ").collect();
        assert_eq!(w, vec![&b"a"[..], &b"b"[..], &b"c"[..]]);
    }
}
