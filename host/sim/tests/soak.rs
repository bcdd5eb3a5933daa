//! Random-fault runs: generation, the invariants on real runs, shrinking.

use std::time::Duration;

use lattice_sim::compile_builtins;
use lattice_sim::soak::{Op, SoakConfig, generate, run_ops, shrink, skews, soak_seed};

fn small() -> SoakConfig {
    SoakConfig {
        nodes: 4,
        steps: 30,
        deadline: Duration::from_secs(30),
        ..SoakConfig::default()
    }
}

#[test]
fn a_seed_gives_the_same_operations_every_time_and_seeds_differ() {
    let config = SoakConfig::default();
    assert_eq!(generate(7, &config), generate(7, &config));
    assert_ne!(generate(7, &config), generate(8, &config));
    let ops = generate(7, &config);
    assert_eq!(ops.len(), config.steps);
    // Clock skews too: per node, within the bound, not all alike.
    let skew = skews(7, &config);
    assert_eq!(skew, skews(7, &config));
    assert_eq!(skew.len(), config.nodes);
    assert!(skew.iter().all(|s| s.abs() <= config.max_skew_ms));
    assert!(skew.windows(2).any(|w| w[0] != w[1]));
    // Over a few seeds every kind of fault shows up.
    let all: Vec<Op> = (0..20).flat_map(|s| generate(s, &config)).collect();
    let has = |f: fn(&Op) -> bool| all.iter().any(f);
    assert!(has(|o| matches!(o, Op::Crash(_))));
    assert!(has(|o| matches!(o, Op::Burst { .. })));
    assert!(has(|o| matches!(o, Op::Partition(_))));
    assert!(has(|o| matches!(o, Op::Revoke { .. })));
    assert!(has(|o| matches!(o, Op::Restart(_))));
}

#[tokio::test(start_paused = true)]
async fn random_fault_runs_keep_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let modules = compile_builtins(&dir.path().join("modules")).unwrap();
    let config = small();
    let mut crashes = 0;
    let mut checks = 0;
    for seed in 1..=4 {
        let outcome = soak_seed(seed, &config, dir.path(), &modules, 0).await;
        let run = match outcome.result {
            Ok(run) => run,
            Err((failure, trace)) => panic!(
                "seed {seed}: {failure}\n{}",
                trace
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        assert!(run.acked > 0, "seed {seed} acknowledged no write");
        assert!(run.metrics.gossip_sent > 0 && run.metrics.sync_sessions > 0);
        crashes += run.crashes;
        checks += run.checks;
    }
    assert!(
        crashes > 0,
        "no seed crashed a node: the faults are not exercised"
    );
    assert!(checks > 4, "only the final checks ran");
}

#[tokio::test(start_paused = true)]
async fn a_failing_sequence_shrinks_to_the_step_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let modules = compile_builtins(&dir.path().join("modules")).unwrap();
    let config = SoakConfig {
        nodes: 2,
        ..small()
    };
    let put = |node: usize, key: &str| Op::Put {
        node,
        key: key.to_string(),
        value: "v".to_string(),
    };
    // Node 9 does not exist: taking it offline fails the run.
    let ops = vec![
        put(0, "a"),
        Op::Partition(vec![vec![0], vec![1]]),
        put(1, "b"),
        Op::Heal,
        Op::Offline(9),
        put(0, "c"),
        Op::Heal,
    ];
    let failure = run_ops(1, &ops, &config, &dir.path().join("first"), &modules)
        .await
        .unwrap_err();
    assert_eq!(failure.step, 4);
    let (shortest, failure) = shrink(1, ops, failure, &config, dir.path(), &modules, 20).await;
    assert_eq!(shortest, vec![Op::Offline(9)]);
    assert_eq!(failure.step, 0);
    assert!(failure.reason.contains("node 9"), "{}", failure.reason);
}
