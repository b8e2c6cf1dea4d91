//! Gate tables: each gate is stamped once, with what opens it.
use super::*;

/// Each gate is stamped once, with what opens it: the stamp of a manual gate is what the event
/// log announces (`gate_waiting`), so a stamped gate is never stamped again (by any leader).
#[test]
fn each_gate_is_stamped_once_with_its_kind() {
    let stamp = |wave, gate| {
        Some(WaveDone {
            wave,
            at_ms: NOW,
            gate,
        })
    };
    let manual = Gate::Manual;
    let bake = Gate::Bake(Duration::from_secs(60));
    // (what, canary gate, open wave, hosts done, rollback, stored stamp, stamp decided)
    type Row = (
        &'static str,
        Gate,
        u32,
        &'static [&'static str],
        bool,
        Option<WaveDone>,
        Option<(u32, WaveGate)>,
    );
    let table: [Row; 8] = [
        ("canary still running", manual, 0, &[], false, None, None),
        (
            "canary done at a manual gate",
            manual,
            0,
            &["h1"],
            false,
            None,
            Some((0, WaveGate::Manual)),
        ),
        (
            "manual gate already stamped",
            manual,
            0,
            &["h1"],
            false,
            stamp(0, WaveGate::Manual),
            None,
        ),
        (
            "canary done at a bake",
            bake,
            0,
            &["h1"],
            false,
            None,
            Some((0, WaveGate::Timed)),
        ),
        (
            "bake already stamped",
            bake,
            0,
            &["h1"],
            false,
            stamp(0, WaveGate::Timed),
            None,
        ),
        (
            "after the promote, the pause is timed",
            manual,
            1,
            &["h1", "h2"],
            false,
            stamp(0, WaveGate::Manual),
            Some((1, WaveGate::Timed)),
        ),
        (
            "the pause already stamped",
            manual,
            1,
            &["h1", "h2"],
            false,
            stamp(1, WaveGate::Timed),
            None,
        ),
        (
            "a rollback has no canary gate",
            manual,
            0,
            &["h1"],
            true,
            None,
            None,
        ),
    ];
    for (what, gate, wave, done, rollback, stored, want) in table {
        let mut st = strategy(Budget::Count(1));
        st.canary = Some(Budget::Count(1));
        st.canary_gate = gate;
        st.waves = vec![Budget::Count(2)];
        let mut w = world(4, st);
        w.rollout.wave = wave;
        w.rollout.wave_done = stored;
        w.rollout.rollback_of = rollback.then(|| "r-0".to_string());
        for h in done {
            w.set(h, HostState::Done);
        }
        let p = w.plan();
        assert_eq!(p.stamp_wave.zip(p.stamp_gate), want, "{what}: {p:?}");
        if gate == manual && wave == 0 && !done.is_empty() && !rollback {
            assert_eq!(
                p.gate, "manual promote",
                "{what}: the status says so, stamped or not"
            );
            assert_eq!(p.wake_at_ms, None, "{what}: an operator decides, no timer");
        }
    }
}
