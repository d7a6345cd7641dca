//! Printing a plan: text for people (coloured on a terminal), markdown for
//! pull-request comments. JSON is the [`Report`] serialised as is.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

use super::{
    Report,
    diff::{Action, Change, ObjectKind},
};
use crate::cli::ColorChoice;

/// Whether to colour text output: `auto` colours a terminal unless
/// `NO_COLOR` is set (<https://no-color.org>).
pub fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn green(&self, s: &str) -> String {
        self.wrap("32", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
}

fn sign(action: Action) -> &'static str {
    match action {
        Action::Create => "+",
        Action::Update => "~",
        Action::Delete => "-",
        Action::Release => "=",
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Release => "release (left in place, no longer managed)",
    }
}

fn noun(object: ObjectKind) -> &'static str {
    match object {
        ObjectKind::MongoRole => "role",
        ObjectKind::MongoUser => "user",
        ObjectKind::CosmosAssignment => "assignment",
        ObjectKind::CosmosDefinition => "role definition",
    }
}

/// `+ create role admin.x (Group …) ← ns/a, ns/b`.
fn headline(c: &Change) -> String {
    format!(
        "{} {} {} {} ({}) <- {}",
        sign(c.action),
        verb(c.action),
        noun(c.object),
        c.name,
        c.owner,
        c.because_of.join(", ")
    )
}

/// The summary sentence.
pub fn summary(r: &Report) -> String {
    let s = &r.summary;
    let mut out = format!("{} to create, {} to update, {} to delete", s.create, s.update, s.delete);
    if s.release > 0 {
        let _ = write!(out, ", {} to release", s.release);
    }
    if s.refused > 0 {
        let _ = write!(out, "; {} binding{} refused", s.refused, if s.refused == 1 { "" } else { "s" });
    }
    if s.invalid > 0 {
        let _ = write!(out, "; {} manifest{} invalid", s.invalid, if s.invalid == 1 { "" } else { "s" });
    }
    out.push('.');
    out
}

fn baseline(r: &Report) -> &'static str {
    match r.baseline {
        "cluster" => "starting from the cluster's dbgrant objects",
        "manifests" => "starting from the --before manifests",
        _ => "starting from an empty cluster (give --kubeconfig or --before to start from the current objects)",
    }
}

/// Plain text, coloured when `color`.
pub fn text(r: &Report, color: bool) -> String {
    let p = Paint(color);
    let mut out = String::new();
    let _ = writeln!(out, "dbgrant plan: {}", baseline(r));
    if !r.invalid.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold("Invalid manifests (the apiserver would refuse them):"));
        for i in &r.invalid {
            let _ = writeln!(out, "  {} {} {}", p.red("x"), i.source, i.object);
            for v in &i.violations {
                let _ = writeln!(out, "      {v}");
            }
        }
    }
    if !r.bindings.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold("Bindings:"));
        for b in &r.bindings {
            let mark = if b.verdict.refused { p.red("x") } else { p.green("v") };
            let was = b.previously.as_ref().map(|w| format!(" (was {w})")).unwrap_or_default();
            let _ = writeln!(out, "  {mark} {} -> {}: {}{was}", b.binding, b.verdict.target, b.verdict.reason);
            if b.verdict.reason != super::end_state::ALLOWED {
                let _ = writeln!(out, "      {}", b.verdict.message);
            }
        }
    }
    for t in &r.targets {
        let observe = if t.observe { " (Observe mode: planned, not written until the target enforces)" } else { "" };
        let _ = writeln!(out, "\n{}", p.bold(&format!("{} {}{observe}:", t.kind, t.name)));
        for c in &t.changes {
            let line = headline(c);
            let line = match c.action {
                Action::Create => p.green(&line),
                Action::Update => p.yellow(&line),
                Action::Delete => p.red(&line),
                Action::Release => p.yellow(&line),
            };
            let _ = writeln!(out, "  {line}");
            for d in &c.details {
                let detail = if c.action == Action::Release {
                    format!("  {}", d.what)
                } else if d.added {
                    p.green(&format!("+ {}", d.what))
                } else {
                    p.red(&format!("- {}", d.what))
                };
                let _ = writeln!(out, "      {detail}");
            }
        }
    }
    if r.targets.is_empty() {
        let _ = writeln!(out, "\nNo changes to any database.");
    }
    for t in &r.backend {
        let _ = writeln!(out, "\n{}", p.bold(&format!("{} {} (live state):", t.kind, t.name)));
        if let Some(e) = &t.error {
            let _ = writeln!(out, "  {} cannot read it: {e}", p.red("x"));
            continue;
        }
        if t.writes.is_empty() && t.foreign.is_empty() {
            let _ = writeln!(out, "  in line with the bindings: nothing to write");
        }
        for w in &t.writes {
            let _ = writeln!(out, "  {}", p.yellow(&format!("would {w}")));
        }
        for d in &t.drifted {
            let _ = writeln!(out, "  {}", p.yellow(&format!("drifted: {d}")));
        }
        for f in &t.foreign {
            let _ = writeln!(out, "  {}", p.red(&format!("foreign, left alone: {f}")));
        }
    }
    let _ = writeln!(out, "\n{} {}", p.bold("Plan:"), summary(r));
    out
}

/// Markdown for a pull-request comment: tables for problems, a `diff`
/// block per target (GitHub and GitLab colour its `+` and `-` lines).
pub fn markdown(r: &Report) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::new();
    let _ = writeln!(out, "### dbgrant plan\n\n**{}** _{}._", summary(r), baseline(r));
    if !r.invalid.is_empty() {
        let _ = writeln!(out, "\n#### Invalid manifests\n\n| Manifest | Object | Field | Problem |\n|---|---|---|---|");
        for i in &r.invalid {
            for v in &i.violations {
                let _ = writeln!(
                    out,
                    "| `{}` | `{}` | `{}` | {} |",
                    cell(&i.source),
                    cell(&i.object),
                    cell(&v.field),
                    cell(&v.message)
                );
            }
        }
    }
    if !r.bindings.is_empty() {
        let _ = writeln!(out, "\n#### Bindings\n\n| | Binding | Target | Verdict | Message |\n|---|---|---|---|---|");
        for b in &r.bindings {
            let mark = if b.verdict.refused { ":x:" } else { ":white_check_mark:" };
            let was = b.previously.as_ref().map(|w| format!(" (was {w})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "| {mark} | `{}` | {} | {}{was} | {} |",
                cell(&b.binding),
                cell(&b.verdict.target),
                b.verdict.reason,
                cell(&b.verdict.message)
            );
        }
    }
    for t in &r.targets {
        let observe = if t.observe { " (Observe mode: planned, not written until the target enforces)" } else { "" };
        let _ = writeln!(out, "\n#### {} `{}`{observe}\n\n```diff", t.kind, t.name);
        for c in &t.changes {
            let line = headline(c);
            // `~` is not a diff marker: updates show as `!` (GitHub colours it).
            let line = match c.action {
                Action::Update | Action::Release => format!("!{}", &line[1..]),
                _ => line,
            };
            let _ = writeln!(out, "{line}");
            for d in &c.details {
                let mark = match (c.action, d.added) {
                    (Action::Release, _) => " ",
                    (_, true) => "+",
                    (_, false) => "-",
                };
                let _ = writeln!(out, "{mark}       {}", d.what);
            }
        }
        let _ = writeln!(out, "```");
    }
    for t in &r.backend {
        let _ = writeln!(out, "\n#### {} `{}`: live state\n", t.kind, t.name);
        if let Some(e) = &t.error {
            let _ = writeln!(out, ":x: cannot read it: {}", cell(e));
            continue;
        }
        if t.writes.is_empty() && t.foreign.is_empty() {
            let _ = writeln!(out, "In line with the bindings: nothing to write.");
        }
        for w in &t.writes {
            let _ = writeln!(out, "- would {}", cell(w));
        }
        for d in &t.drifted {
            let _ = writeln!(out, "- drifted: {}", cell(d));
        }
        for f in &t.foreign {
            let _ = writeln!(out, "- :warning: foreign, left alone: {}", cell(f));
        }
    }
    out
}
