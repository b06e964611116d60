//! `texu events`: the controller's recent decisions as a table, JSON or YAML, or followed live.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Deserialize;
use texu_api::Event;

use crate::client::Client;
use crate::output;

/// Arguments of `texu events`.
#[derive(clap::Args)]
pub struct Args {
    /// After listing, print each new event as it happens (Ctrl-C to stop).
    #[arg(short, long)]
    watch: bool,
    /// Output: json or yaml (default: a table). With --watch, one JSON line or YAML document
    /// per event.
    #[arg(short, long)]
    output: Option<Format>,
}

/// An output format.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

/// What `GET /v1/events` answers.
#[derive(Deserialize)]
struct EventList {
    items: Vec<Event>,
    seq: u64,
}

const HEADER: [&str; 5] = ["AGE", "KIND", "OBJECT", "NODE", "MESSAGE"];
/// Column widths a followed table starts with, so most new rows line up with the first ones.
const MIN_WIDTHS: [usize; 4] = [4, 13, 24, 10];

/// Runs `texu events`.
pub fn run(client: &Client, args: &Args) -> Result<ExitCode> {
    let list: serde_json::Value = client.get("/v1/events")?;
    let EventList { items, seq } = serde_json::from_value(list.clone())
        .context("the controller sent an event list this texu does not understand")?;
    if !args.watch {
        match args.output {
            Some(Format::Json) => println!("{}", serde_json::to_string_pretty(&list)?),
            Some(Format::Yaml) => {
                print!("{}", output::escape_text(&serde_yaml_ng::to_string(&list)?))
            }
            None if items.is_empty() => eprintln!("No events found."),
            None => {
                let rows: Vec<Vec<String>> = items.iter().map(row).collect();
                print!("{}", output::table(&HEADER, &rows));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    let mut widths = MIN_WIDTHS.to_vec();
    for (i, width) in widths.iter_mut().enumerate() {
        let longest = rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
        *width = (*width).max(longest).max(HEADER[i].len());
    }
    let mut out = std::io::stdout().lock();
    if args.output.is_none() {
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        writeln!(out, "{}", line(&widths, &header))?;
    }
    for event in &items {
        print_one(&mut out, event, args.output, &widths)?;
    }
    out.flush()?;
    let reader = client.watch(&format!("/v1/events?watch=true&after={seq}"))?;
    for text in reader.lines() {
        let text = text.context("reading the event stream")?;
        let event: Event = serde_json::from_str(&text).with_context(|| {
            format!("the controller sent an event this texu does not understand: {text}")
        })?;
        print_one(&mut out, &event, args.output, &widths)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_one(
    out: &mut impl Write,
    event: &Event,
    format: Option<Format>,
    widths: &[usize],
) -> Result<()> {
    match format {
        Some(Format::Json) => writeln!(out, "{}", serde_json::to_string(event)?)?,
        Some(Format::Yaml) => write!(
            out,
            "---\n{}",
            output::escape_text(&serde_yaml_ng::to_string(event)?)
        )?,
        None => writeln!(out, "{}", output::escape(&line(widths, &row(event))))?,
    }
    Ok(())
}

/// One table row: AGE, KIND, OBJECT, NODE, MESSAGE.
fn row(event: &Event) -> Vec<String> {
    vec![
        output::age(Some(&event.time)),
        event.kind.to_string(),
        event.object.clone(),
        event.node.clone().unwrap_or_else(|| "-".into()),
        event.message.clone(),
    ]
}

/// Cells padded to `widths` (the last one is not padded), three spaces apart like tables.
fn line(widths: &[usize], cells: &[String]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        out.push_str(cell);
        if let Some(width) = widths.get(i) {
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            out.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_line_up_and_show_a_dash_without_a_node() {
        let event = Event {
            seq: 1,
            time: "2020-01-01T00:00:00Z".into(),
            kind: texu_api::EventKind::Unschedulable,
            object: "container/app-0".into(),
            node: None,
            message: "0/0 nodes: no node has joined".into(),
        };
        let cells = row(&event);
        assert_eq!(cells[3], "-");
        assert!(cells[0].ends_with('d'), "{}", cells[0]);
        let text = line(&[4, 13, 16, 4], &cells);
        assert!(
            text.ends_with(
                "Unschedulable   container/app-0    -      0/0 nodes: no node has joined"
            ),
            "{text:?}"
        );
    }
}
