//! `wasmraft invoke MODULE INPUT`: send a command to a module, exactly once,
//! and print its output. Also the request body arguments (`INPUT` or
//! `--input-file`) and their JSON check, shared with `wasmraft query`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::connection::{ConnectionArgs, UsageError};

#[derive(Debug, clap::Args)]
#[command(override_usage = "wasmraft invoke [OPTIONS] <MODULE> <INPUT | --input-file FILE>")]
pub struct InvokeArgs {
    /// The module to run the command on.
    module: String,
    #[command(flatten)]
    input: InputArgs,
}

/// The request body: a string argument, or a file's bytes.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct InputArgs {
    /// The request body, sent as is. When it starts with `{` or `[` it must
    /// be valid JSON (quote it for your shell: '{"op":"add","by":1}').
    input: Option<String>,
    /// Read the request body from FILE as raw bytes instead (`-` for stdin);
    /// no JSON check.
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
}

impl InputArgs {
    /// The bytes to send, after the local checks.
    pub fn body(&self) -> Result<Vec<u8>, UsageError> {
        match (&self.input, &self.input_file) {
            (Some(text), _) => {
                check_json(text).map_err(UsageError)?;
                Ok(text.clone().into_bytes())
            }
            (None, Some(path)) if path.as_os_str() == "-" => {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes).map_err(|error| {
                    UsageError(format!("cannot read the input from stdin: {error}"))
                })?;
                Ok(bytes)
            }
            (None, Some(path)) => std::fs::read(path).map_err(|error| {
                UsageError(format!(
                    "cannot read the input file {}: {error}",
                    path.display()
                ))
            }),
            (None, None) => Err(UsageError(
                "give the request body as INPUT or with --input-file".to_owned(),
            )),
        }
    }
}

/// Refuses an input that looks like JSON (starts with `{` or `[`) but does
/// not parse, saying what is wrong and where; anything else passes as is.
pub fn check_json(input: &str) -> Result<(), String> {
    let trimmed = input.trim_start();
    let Some(first) = trimmed.chars().next().filter(|c| matches!(c, '{' | '[')) else {
        return Ok(());
    };
    let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(input) else {
        return Ok(());
    };
    let mut message = format!("INPUT starts with `{first}` but is not valid JSON: {error}");
    // Point at the column on the offending line, when it is short enough
    // to show.
    if let Some(line) = input.lines().nth(error.line().saturating_sub(1))
        && line.len() <= 120
        && error.column() > 0
    {
        let column_bytes = error.column().min(line.len().max(1));
        let prefix_chars = line
            .char_indices()
            .take_while(|(index, _)| *index < column_bytes.saturating_sub(1))
            .count();
        message.push_str(&format!("\n  {line}\n  {}^", " ".repeat(prefix_chars)));
    }
    message.push_str(
        "\nsend valid JSON quoted for your shell, e.g. '{\"op\":\"add\",\"by\":1}', or raw bytes with --input-file",
    );
    Err(message)
}

/// Writes a module's output to stdout as is, with a newline only for a
/// person at a terminal.
pub fn print_output(output: &[u8]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut stdout = stdout.lock();
    let written = stdout
        .write_all(output)
        .and_then(|()| {
            if terminal {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        // A reader that stopped early (`| head`) is not an error of ours.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub fn run(args: InvokeArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    connection.run(async move {
        let input = args.input.body()?;
        let client = connection.client().await?;
        let result = client.invoke(&args.module, &input).await?;
        tracing::debug!(
            fuel_used = result.fuel_used,
            applied_index = result.applied_index,
            "invoked"
        );
        print_output(&result.output)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_looking_input_must_parse() {
        assert_eq!(check_json(r#"{"op":"add","by":1}"#), Ok(()));
        assert_eq!(check_json(r#"  [1, 2]"#), Ok(()));
        // Not JSON-looking: sent as is.
        assert_eq!(check_json("hello"), Ok(()));
        assert_eq!(check_json(""), Ok(()));
        assert_eq!(check_json("\"quoted\""), Ok(()));
    }

    #[test]
    fn bad_json_says_what_and_where() {
        let message = check_json(r#"{"op":"add","by":}"#).expect_err("invalid");
        let mut lines = message.lines();
        assert_eq!(
            lines.next(),
            Some("INPUT starts with `{` but is not valid JSON: expected value at line 1 column 18")
        );
        assert_eq!(lines.next(), Some(r#"  {"op":"add","by":}"#));
        assert_eq!(lines.next(), Some("                   ^"));
        assert!(
            lines
                .next()
                .is_some_and(|hint| hint.contains("--input-file"))
        );
    }

    #[test]
    fn unquoted_keys_are_refused() {
        let message = check_json("{op:add}").expect_err("invalid");
        assert!(
            message.contains("key must be a string at line 1 column 2"),
            "{message}"
        );
    }

    #[test]
    fn truncated_json_is_refused() {
        let message = check_json(r#"[{"op":"add""#).expect_err("invalid");
        assert!(message.starts_with("INPUT starts with `[`"), "{message}");
        assert!(message.contains("EOF while parsing"), "{message}");
    }
}
