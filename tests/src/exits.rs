//! No silent crashes (issue 14, item 2). Every coordinator and agent exit that the harness did
//! not cause with a kill or a stop is recorded ([`OwnExit`]), and so is every `panicked at` in
//! their logs (a panic inside a task does not end the process). When a [`Fleet`] is dropped at
//! the end of a test that did not fail otherwise, any such exit or panic that the test did not
//! declare with [`Fleet::expect_exits`] fails the test, naming the process, how it ended and the
//! tail of its log. The supervisor still restarts a replica that exits (as systemd would): the
//! fleet goes on, and the test fails at its end.

use crate::*;

/// What a test provokes on purpose, indirectly (a kill or a stop by the harness needs no
/// declaration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The process exits on its own with a status, not a crash: a replica whose etcd lease ran
    /// out while the test held it stopped, one that cannot reach a restarted etcd, a process
    /// refusing a setting the test gave it.
    Exit,
    /// The process dies of a signal or a panic the test provoked (the agent's crash-at-step
    /// fault injection aborts it).
    Crash,
}

/// One declaration of [`Fleet::expect_exits`].
#[derive(Debug, Clone)]
pub(crate) struct Expectation {
    who: String,
    what: Expected,
    why: String,
}

impl Expectation {
    /// `who` is a process name (`coord-2`, `host-3`), or `coordinators` / `agents`.
    fn covers(&self, name: &str, crash: bool) -> bool {
        let whom = match self.who.as_str() {
            "coordinators" => name.starts_with("coord-"),
            "agents" => !name.starts_with("coord-"),
            who => who == name,
        };
        // A declared crash covers plain exits too; a declared exit never covers a crash.
        whom && (self.what == Expected::Crash || !crash)
    }
}

impl Fleet {
    /// Declares that this test makes `who` exit on its own (`what`), and why; such exits do
    /// not fail the test. `who`: a process name (`coord-2`, `host-3`), or `coordinators` or
    /// `agents` for all of them.
    pub fn expect_exits(&self, who: &str, what: Expected, why: &str) {
        lock(&self.expected_exits).push(Expectation {
            who: who.to_string(),
            what,
            why: why.to_string(),
        });
    }

    /// Every coordinator and agent exit or panic that no declaration covers, described for
    /// the test's failure message.
    pub fn unplanned_exits(&mut self) -> Vec<String> {
        let expected = lock(&self.expected_exits).clone();
        let mut seen: Vec<(OwnExit, bool)> = Vec::new();
        let mut panics = Vec::new();
        for c in &self.coordinators {
            let mut p = lock(&c.proc);
            seen.extend(p.own_exits().into_iter().map(|e| (e, false)));
            panics.extend(panic_lines(&p));
        }
        for a in &mut self.agents {
            seen.extend(a.proc.own_exits().into_iter().map(|e| (e, false)));
            panics.extend(panic_lines(&a.proc));
        }
        let mut out = Vec::new();
        for (e, _) in seen.iter().filter(|(e, _)| !e.asked) {
            if expected.iter().any(|x| x.covers(&e.name, e.is_crash())) {
                continue;
            }
            let how = if e.is_crash() {
                "crashed"
            } else {
                "exited on its own"
            };
            out.push(format!(
                "{} {how} ({}), which the test did not cause; its log ended:\n{}",
                e.name, e.status, e.tail
            ));
        }
        for (name, line) in panics {
            if !expected.iter().any(|x| x.covers(&name, true)) {
                out.push(format!("{name} panicked: {line}"));
            }
        }
        out
    }

    /// Fails the test (a panic) on the exits and panics [`Fleet::unplanned_exits`] found;
    /// called at the end of the fleet's drop, when everything is stopped.
    pub(crate) fn fail_on_unplanned_exits(&self, unplanned: Vec<String>) {
        if unplanned.is_empty() {
            return;
        }
        let declared: Vec<String> = lock(&self.expected_exits)
            .iter()
            .map(|x| format!("{} {:?} ({})", x.who, x.what, x.why))
            .collect();
        self.dump_logs();
        panic!(
            "{} unplanned exit(s) or panic(s) in this fleet (declared: {declared:?}):\n{}",
            unplanned.len(),
            unplanned.join("\n----\n")
        );
    }
}

/// `(process, line)` for every `panicked at` in a process's log.
fn panic_lines(p: &Proc) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(&p.log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("panicked at"))
        .map(|l| (p.name.clone(), l.to_string()))
        .collect()
}
