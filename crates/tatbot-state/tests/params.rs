//! Parameters: declaration, validation, compare-and-set, load, watch, dump and persistence.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tatbot_state::params::{CasOutcome, Change, ChangeOp, Prefix, Watch};
use tatbot_state::{Descriptor, ParamName, ParamType, ParamValue, Params};
use tatbot_state_testkit::RedisServer;
use tokio::sync::Barrier;

use crate::util::{bytes_sent, manager, raw, setup};

/// How long a watch may take to deliver a change.
const DELIVERY: Duration = Duration::from_secs(5);

fn name(text: &str) -> ParamName {
    ParamName::new(text).unwrap()
}

fn all() -> Prefix {
    Prefix::all()
}

/// A fresh server and the parameters of node `hog` on it.
async fn params() -> (RedisServer, Params) {
    let (server, state) = setup("hog").await;
    (server, state.params())
}

/// Declares the parameters most tests use: a bounded float, a stepped int, a read-only int, a
/// string and a float list.
async fn declare_arms(params: &Params) {
    let declarations = [
        (
            "arms.goal_time_slow",
            Descriptor::new(2.0).description("slow move time, s").range(0.1, 5.0),
        ),
        ("arms.offset_num", Descriptor::new(4_i64).range(0.0, 10.0).step(2.0)),
        ("arms.joint_count", Descriptor::new(7_i64).read_only()),
        ("arms.pose", Descriptor::new("ready")),
        ("arms.home", Descriptor::new(vec![0.0, 0.5]).range(-3.0, 3.0)),
    ];
    for (text, descriptor) in declarations {
        params.declare(&name(text), &descriptor).await.unwrap();
    }
}

#[cfg(feature = "yaml")]
async fn value(params: &Params, text: &str) -> ParamValue {
    params.get(&name(text)).await.unwrap().expect("declared").value
}

async fn next(watch: &mut Watch) -> Change {
    tokio::time::timeout(DELIVERY, watch.next())
        .await
        .expect("a change within 5 s")
        .expect("the change decodes")
}

/// A declaration stores the default with version 1 and this node as actor; declaring again is a no-op.
#[tokio::test]
async fn declare_is_idempotent() {
    let (_server, params) = params().await;
    let goal = name("arms.goal_time_slow");
    let descriptor = Descriptor::new(2.0).description("slow move time, s").range(0.1, 5.0);
    let first = params.declare(&goal, &descriptor).await.unwrap();
    assert_eq!(
        (first.value.clone(), first.version, first.actor.as_str()),
        (ParamValue::Float(2.0), 1, "hog")
    );
    params.set(&goal, &ParamValue::Float(3.0)).await.unwrap();
    let again = params.declare(&goal, &descriptor).await.unwrap();
    assert_eq!((again.value, again.version), (ParamValue::Float(3.0), 2));
    let stored = params.get(&goal).await.unwrap().unwrap();
    assert_eq!(stored.descriptor, descriptor);
    assert_eq!(params.history(&all(), 10).await.unwrap().len(), 2);
}

/// Every validation rule fails with a one-line message naming the parameter and the rule, and changes nothing.
#[tokio::test]
async fn validation_rules_name_the_rule() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let cases: [(&str, ParamValue, &str); 8] = [
        (
            "arms.goal_time_slow",
            ParamValue::from("fast"),
            "arms.goal_time_slow: expected a float, got the string \"fast\"",
        ),
        (
            "arms.goal_time_slow",
            ParamValue::Float(9.5),
            "arms.goal_time_slow: 9.5 is above the maximum 5.0",
        ),
        (
            "arms.goal_time_slow",
            ParamValue::Float(0.01),
            "arms.goal_time_slow: 0.01 is below the minimum 0.1",
        ),
        (
            "arms.offset_num",
            ParamValue::Int(7),
            "arms.offset_num: 7 is off the step grid 0 + k * 2",
        ),
        (
            "arms.joint_count",
            ParamValue::Int(6),
            "arms.joint_count: is read-only; only a new declaration changes it",
        ),
        (
            "arms.home",
            ParamValue::FloatList(vec![0.0, 4.0]),
            "arms.home[1]: 4.0 is above the maximum 3.0",
        ),
        (
            "arms.pose",
            ParamValue::Int(1),
            "arms.pose: expected a string, got the int 1",
        ),
        ("arms.nope", ParamValue::Int(1), "arms.nope: no such parameter"),
    ];
    for (text, bad, message) in cases {
        let err = params.set(&name(text), &bad).await.unwrap_err();
        let unknown = text == "arms.nope";
        assert!(
            matches!(err, tatbot_state::Error::InvalidInput(_))
                || unknown && matches!(err, tatbot_state::Error::ParamNotFound(_)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), message);
    }
    let err = ParamName::new("arms..x").unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid parameter name \"arms..x\": it has an empty segment (two dots in a row, or a dot at an end)"
    );
    let err = params
        .declare(&name("arms.goal_time_slow"), &Descriptor::new(2_i64))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "arms.goal_time_slow: already declared as float, cannot redeclare it as int"
    );
    for param in params.list(&all()).await.unwrap() {
        assert_eq!(param.version, 1, "{} changed", param.name);
    }
    assert_eq!(params.history(&all(), 100).await.unwrap().len(), 5);
}

/// A re-declaration updates the descriptor and keeps the value; one the value no longer fits is refused.
#[tokio::test]
async fn redeclaration() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let goal = name("arms.goal_time_slow");
    params.set(&goal, &ParamValue::Float(4.5)).await.unwrap();
    let wider = Descriptor::new(2.0).description("slow move time, s").range(0.1, 8.0);
    let param = params.declare(&goal, &wider).await.unwrap();
    assert_eq!(
        (param.value, param.version, param.descriptor.max),
        (ParamValue::Float(4.5), 3, Some(8.0))
    );
    let history = params.history(&Prefix::from(goal.clone()), 1).await.unwrap();
    assert_eq!(
        (history[0].op, history[0].old.clone()),
        (ChangeOp::Declare, Some(ParamValue::Float(4.5)))
    );

    let narrower = Descriptor::new(2.0).range(0.1, 3.0);
    let err = params.declare(&goal, &narrower).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "arms.goal_time_slow: 4.5 is above the maximum 3.0, so the stored value does not fit the new declaration; set one that both allow first"
    );

    // A read-only value follows its declaration.
    let joints = params
        .declare(&name("arms.joint_count"), &Descriptor::new(6_i64).read_only())
        .await
        .unwrap();
    assert_eq!((joints.value, joints.version), (ParamValue::Int(6), 2));
}

/// A parameter is a leaf: nothing is declared under one, and no parameter over existing ones.
#[tokio::test]
async fn names_form_a_tree() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let err = params
        .declare(&name("arms.pose.x"), &Descriptor::new(1.0))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "arms.pose.x: cannot be declared under the parameter arms.pose (a parameter has no parameters under it)"
    );
    let err = params.declare(&name("arms"), &Descriptor::new(1.0)).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("arms: cannot be declared because the parameter arms."),
        "{err}"
    );
    assert!(params.get(&name("arms")).await.unwrap().is_none());
}

/// Listing is by name and by prefix (never a sibling sharing letters); get_many keeps the order asked.
#[tokio::test]
async fn list_and_get_many() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    for text in ["arms2.x", "arms-x", "camera.fps"] {
        params.declare(&name(text), &Descriptor::new(1_i64)).await.unwrap();
    }
    let listed: Vec<String> = params
        .list(&Prefix::new("arms").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|param| param.name.to_string())
        .collect();
    assert_eq!(
        listed,
        [
            "arms.goal_time_slow",
            "arms.home",
            "arms.joint_count",
            "arms.offset_num",
            "arms.pose"
        ]
    );
    assert_eq!(params.list(&all()).await.unwrap().len(), 8);
    let many = params
        .get_many(&[name("camera.fps"), name("nope"), name("arms.pose")])
        .await
        .unwrap();
    let values: Vec<Option<ParamValue>> = many.into_iter().map(|param| param.map(|param| param.value)).collect();
    assert_eq!(
        values,
        [Some(ParamValue::Int(1)), None, Some(ParamValue::from("ready"))]
    );
}

/// Two writers doing compare-and-set on one parameter, concurrently: exactly one wins each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_has_one_winner_per_round() {
    const ROUNDS: u64 = 200;
    let server = RedisServer::start();
    let counter = name("arms.offset_num");
    let first = manager(&server, "hog").await.params();
    first.declare(&counter, &Descriptor::new(0_i64)).await.unwrap();
    let second = manager(&server, "eek").await.params();
    let barrier = Arc::new(Barrier::new(2));
    let writer = |params: Params, who: i64| {
        let barrier = Arc::clone(&barrier);
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                // Both read the same version, then both try to move it on.
                barrier.wait().await;
                let version = params.get(&counter).await.unwrap().unwrap().version;
                assert_eq!(version, round + 1);
                barrier.wait().await;
                let value = ParamValue::Int(who * 1000 + i64::try_from(round).unwrap());
                match params.set_if_version(&counter, &value, version).await.unwrap() {
                    CasOutcome::Applied(param) => {
                        assert_eq!(param.version, version + 1);
                        wins.push(round);
                    }
                    CasOutcome::Conflict { version: now } => assert_eq!(now, version + 1),
                }
                barrier.wait().await;
            }
            wins
        })
    };
    let (hog, eek) = (writer(first.clone(), 1), writer(second, 2));
    let (hog, eek) = (hog.await.unwrap(), eek.await.unwrap());
    assert_eq!(hog.len() + eek.len(), usize::try_from(ROUNDS).unwrap());
    assert!(hog.iter().all(|round| !eek.contains(round)));
    let stored = first.get(&counter).await.unwrap().unwrap();
    assert_eq!(stored.version, ROUNDS + 1);
    let history = first.history(&all(), 1000).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|change| change.version).collect();
    assert_eq!(versions, (1..=ROUNDS + 1).collect::<Vec<_>>());
}

/// Plain sets from two writers racing all land: the loser of each race reads again and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sets_all_land() {
    const SETS: i64 = 100;
    let server = RedisServer::start();
    let goal = name("arms.goal_time_slow");
    let first = manager(&server, "hog").await.params();
    first
        .declare(&goal, &Descriptor::new(1.0).range(0.0, 1000.0))
        .await
        .unwrap();
    let second = manager(&server, "eek").await.params();
    let writer = |params: Params, offset: i64| {
        let goal = goal.clone();
        tokio::spawn(async move {
            for step in 0..SETS {
                params.set(&goal, &ParamValue::Int(offset + step)).await.unwrap();
            }
        })
    };
    let (hog, eek) = (writer(first.clone(), 0), writer(second, 500));
    hog.await.unwrap();
    eek.await.unwrap();
    let stored = first.get(&goal).await.unwrap().unwrap();
    assert_eq!(stored.version, 1 + 2 * u64::try_from(SETS).unwrap());
}

#[cfg(feature = "yaml")]
/// A load with one bad value changes nothing; its dry run changes nothing either but shows the diff and the error.
#[tokio::test]
async fn load_is_all_or_nothing() {
    let (server, params) = params().await;
    declare_arms(&params).await;
    let file = "\
arms:
  goal_time_slow: 3.5
  offset_num: 9
  pose: home
  new_flag: true
";
    let plan = params.plan_load(file, &all()).await.unwrap();
    let changes: Vec<(&str, ChangeOp, Option<ParamValue>, ParamValue)> = plan
        .changes
        .iter()
        .map(|change| (change.name.as_str(), change.op, change.old.clone(), change.new.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (
                "arms.goal_time_slow",
                ChangeOp::Load,
                Some(ParamValue::Float(2.0)),
                ParamValue::Float(3.5)
            ),
            (
                "arms.pose",
                ChangeOp::Load,
                Some(ParamValue::from("ready")),
                ParamValue::from("home")
            ),
            ("arms.new_flag", ChangeOp::Declare, None, ParamValue::Bool(true)),
        ]
    );
    assert_eq!(plan.errors, ["arms.offset_num: 9 is off the step grid 0 + k * 2"]);

    let err = params.load(file, &all()).await.unwrap_err();
    assert_eq!(err.to_string(), "arms.offset_num: 9 is off the step grid 0 + k * 2");
    assert_eq!(value(&params, "arms.goal_time_slow").await, ParamValue::Float(2.0));
    assert!(params.get(&name("arms.new_flag")).await.unwrap().is_none());
    let mut connection = raw(&server).await;
    let audit_len: usize = connection.xlen("tatbot:param_log").await.unwrap();
    assert_eq!(audit_len, 5, "only the five declarations are logged");

    let fixed = file.replace("offset_num: 9", "offset_num: 8");
    let plan = params.load(&fixed, &all()).await.unwrap();
    assert_eq!(plan.changes.len(), 4);
    assert_eq!(value(&params, "arms.offset_num").await, ParamValue::Int(8));
    assert_eq!(value(&params, "arms.new_flag").await, ParamValue::Bool(true));
    let again = params.load(&fixed, &all()).await.unwrap();
    assert_eq!((again.changes.len(), again.unchanged.len()), (0, 4));
}

#[cfg(feature = "yaml")]
/// A load cannot change a read-only value, but may restate it.
#[tokio::test]
async fn load_respects_read_only() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let err = params
        .load("joint_count: 6\n", &Prefix::new("arms").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "arms.joint_count: is read-only; only a new declaration changes it"
    );
    let plan = params
        .load("joint_count: 7\n", &Prefix::new("arms").unwrap())
        .await
        .unwrap();
    assert_eq!(plan.unchanged, [name("arms.joint_count")]);
}

#[cfg(feature = "yaml")]
/// A Hydra config declares what is missing with inferred types, skips Hydra's entries, and sets the rest.
#[tokio::test]
async fn hydra_load_infers_types() {
    let (_server, params) = params().await;
    params
        .declare(&name("arms.goal_time_slow"), &Descriptor::new(2.0).range(0.1, 5.0))
        .await
        .unwrap();
    let file = "\
# @package _global_
defaults:
  - _self_
_target_: tatbot.bot.arms.Arms
goal_time_slow: 3
goal_time_fast: 0.5
offset_num: 4
connect_timeout_s: 10
debug: false
ip_l: 192.168.1.3
joints_home: [0, 0.5, 1]
cameras:
  names: [left, right]
  fps: 30
tag: ${oc.env:TATBOT_TAG}
empty_list: []
nothing: null
";
    let plan = params.load(file, &Prefix::new("arms").unwrap()).await.unwrap();
    let declared: Vec<(&str, ParamType)> = plan
        .changes
        .iter()
        .filter(|change| change.op == ChangeOp::Declare)
        .map(|change| (change.name.as_str(), change.param_type))
        .collect();
    assert_eq!(
        declared,
        [
            ("arms.goal_time_fast", ParamType::Float),
            ("arms.offset_num", ParamType::Int),
            ("arms.connect_timeout_s", ParamType::Int),
            ("arms.debug", ParamType::Bool),
            ("arms.ip_l", ParamType::String),
            ("arms.joints_home", ParamType::FloatList),
            ("arms.cameras.names", ParamType::StringList),
            ("arms.cameras.fps", ParamType::Int),
        ]
    );
    let skipped: Vec<&str> = plan.skipped.iter().map(|skip| skip.path.as_str()).collect();
    assert_eq!(
        skipped,
        [
            "arms.defaults",
            "arms._target_",
            "arms.tag",
            "arms.empty_list",
            "arms.nothing"
        ]
    );
    // The declared float took the int 3 as 3.0.
    assert_eq!(value(&params, "arms.goal_time_slow").await, ParamValue::Float(3.0));
    assert_eq!(
        value(&params, "arms.joints_home").await,
        ParamValue::FloatList(vec![0.0, 0.5, 1.0])
    );
    let fps = params.get(&name("arms.cameras.fps")).await.unwrap().unwrap();
    assert_eq!(
        (fps.value, fps.descriptor.default),
        (ParamValue::Int(30), ParamValue::Int(30))
    );
}

#[cfg(feature = "yaml")]
/// A dump loads back to the same values, onto the same server and onto an empty one.
#[tokio::test]
async fn dump_loads_back() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let tricky = [
        ("text.number_like", ParamValue::from("42")),
        ("text.bool_like", ParamValue::from("true")),
        ("text.multi", ParamValue::from("line one\nline: two")),
        ("floats.third", ParamValue::Float(0.1 + 0.2)),
        ("floats.tiny", ParamValue::Float(1e-300)),
        ("ints.big", ParamValue::Int(i64::MAX)),
        ("lists.flags", ParamValue::BoolList(vec![true, false])),
    ];
    for (text, value) in &tricky {
        params
            .declare(&name(text), &Descriptor::new(value.clone()))
            .await
            .unwrap();
    }
    let before = params.list(&all()).await.unwrap();
    let dump = params.dump(&all()).await.unwrap();
    assert!(dump.starts_with("arms:\n  goal_time_slow: 2.0\n"), "{dump}");

    params
        .set(&name("arms.goal_time_slow"), &ParamValue::Float(4.0))
        .await
        .unwrap();
    params
        .set(&name("text.number_like"), &ParamValue::from("43"))
        .await
        .unwrap();
    let plan = params.load(&dump, &all()).await.unwrap();
    assert_eq!(plan.changes.len(), 2);
    let after = params.list(&all()).await.unwrap();
    let values = |list: &[tatbot_state::Param]| -> Vec<(String, ParamValue)> {
        list.iter()
            .map(|param| (param.name.to_string(), param.value.clone()))
            .collect()
    };
    assert_eq!(values(&after), values(&before));

    let (_other_server, fresh) = self::params().await;
    let plan = fresh.load(&dump, &all()).await.unwrap();
    assert!(plan.errors.is_empty() && plan.skipped.is_empty(), "{plan:?}");
    assert_eq!(values(&fresh.list(&all()).await.unwrap()), values(&before));
}

/// A watch sees every change once, in order: made before its first read, while it blocks, and between reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_change_once_in_order() {
    let (server, params) = params().await;
    declare_arms(&params).await;
    let goal = name("arms.goal_time_slow");
    let mut watch = params.watch(&Prefix::new("arms").unwrap()).await.unwrap();
    params
        .declare(&name("camera.fps"), &Descriptor::new(30_i64))
        .await
        .unwrap();

    // Made before the first read.
    params.set(&goal, &ParamValue::Float(2.5)).await.unwrap();
    let change = next(&mut watch).await;
    assert_eq!(
        (
            change.name.as_str(),
            change.version,
            change.op,
            change.actor.as_str(),
            change.old.clone(),
            change.new.clone()
        ),
        (
            "arms.goal_time_slow",
            2,
            ChangeOp::Set,
            "hog",
            Some(ParamValue::Float(2.0)),
            ParamValue::Float(2.5)
        )
    );

    // Made by another node while the watch is blocked in XREAD, and then between its reads.
    let other = manager(&server, "eek").await.params();
    let writer = {
        let other = other.clone();
        let goal = goal.clone();
        tokio::spawn(async move {
            for step in 0..50_u32 {
                other
                    .set(&goal, &ParamValue::Float(f64::from(step + 1) / 10.0))
                    .await
                    .unwrap();
                other
                    .set(&name("camera.fps"), &ParamValue::Int(step.into()))
                    .await
                    .unwrap();
            }
        })
    };
    for step in 0..50 {
        let change = next(&mut watch).await;
        assert_eq!(change.name, goal);
        assert_eq!(change.version, 3 + step);
        assert_eq!(change.actor.as_str(), "eek");
        assert_eq!(
            change.new,
            ParamValue::Float(f64::from(u32::try_from(step).unwrap() + 1) / 10.0)
        );
    }
    writer.await.unwrap();
    for step in 1..=20 {
        other
            .set(&goal, &ParamValue::Float(f64::from(step) / 10.0))
            .await
            .unwrap();
    }
    for step in 0..20 {
        assert_eq!(next(&mut watch).await.version, 53 + step);
    }
    // Nothing is delivered twice: the next change is the next one made.
    params.set(&name("arms.pose"), &ParamValue::from("home")).await.unwrap();
    let last = next(&mut watch).await;
    assert_eq!((last.name.as_str(), last.version), ("arms.pose", 2));
}

/// A watch that fell behind a trimmed log says how many changes it missed, then carries on.
#[tokio::test]
async fn watch_reports_a_gap() {
    let (server, params) = params().await;
    declare_arms(&params).await;
    let goal = name("arms.goal_time_slow");
    let mut watch = params.watch(&all()).await.unwrap();
    for step in 1..=5 {
        params.set(&goal, &ParamValue::Float(f64::from(step))).await.unwrap();
    }
    let mut connection = raw(&server).await;
    let _: usize = redis::cmd("XTRIM")
        .arg("tatbot:param_log")
        .arg("MAXLEN")
        .arg(2)
        .query_async(&mut connection)
        .await
        .unwrap();
    let err = tokio::time::timeout(DELIVERY, watch.next()).await.unwrap().unwrap_err();
    assert!(err.to_string().starts_with("parameter watch missed 3 changes"), "{err}");
    assert_eq!(next(&mut watch).await.new, ParamValue::Float(4.0));
    assert_eq!(next(&mut watch).await.new, ParamValue::Float(5.0));
}

/// A watch whose log another client replaced with another type says so, naming the key, at
/// the pace of a blocked read and without losing Redis, and carries on once the log is back
/// (before, it failed with a bare WRONGTYPE at once, and `param watch` printed it in a tight
/// loop).
#[tokio::test]
async fn watch_reports_a_log_of_another_type() {
    let (server, params) = params().await;
    declare_arms(&params).await;
    let goal = name("arms.goal_time_slow");
    let mut watch = params.watch(&all()).await.unwrap();
    let mut connection = raw(&server).await;
    let _: i64 = connection.del(tatbot_state::keys::PARAM_LOG).await.unwrap();
    let () = connection
        .set(tatbot_state::keys::PARAM_LOG, "not a stream")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let err = tokio::time::timeout(DELIVERY, watch.next()).await.unwrap().unwrap_err();
        match err {
            tatbot_state::Error::Corrupt { key, .. } => assert_eq!(key, tatbot_state::keys::PARAM_LOG),
            other => panic!("{other:?}"),
        }
    }
    // At the pace of a blocked read, not in a tight loop.
    assert!(started.elapsed() >= tatbot_state::params::WATCH_BLOCK);
    let _: i64 = connection.del(tatbot_state::keys::PARAM_LOG).await.unwrap();
    params.set(&goal, &ParamValue::Float(3.0)).await.unwrap();
    let mut changed = None;
    for _ in 0..3 {
        match tokio::time::timeout(DELIVERY, watch.next()).await.unwrap() {
            Ok(change) => {
                changed = Some(change);
                break;
            }
            // The log came back shorter than the cursor: a gap, said once.
            Err(err) => assert!(!matches!(err, tatbot_state::Error::Corrupt { .. }), "{err}"),
        }
    }
    assert_eq!(
        changed.expect("the change after the log is back").new,
        ParamValue::Float(3.0)
    );
}

/// Values, versions and the audit log survive a Redis crash and restart with the AOF.
#[tokio::test]
async fn values_survive_a_restart() {
    let mut server = RedisServer::builder()
        .persistence(true)
        .config("appendfsync", "always")
        .start();
    let params = manager(&server, "hog").await.params();
    declare_arms(&params).await;
    params
        .set(&name("arms.goal_time_slow"), &ParamValue::Float(4.25))
        .await
        .unwrap();
    params
        .set(&name("arms.home"), &ParamValue::FloatList(vec![1.5, -2.0]))
        .await
        .unwrap();
    let before = params.list(&all()).await.unwrap();
    server.kill();
    server.restart();
    let params = manager(&server, "hog").await.params();
    assert_eq!(params.list(&all()).await.unwrap(), before);
    let history = params.history(&all(), 100).await.unwrap();
    assert_eq!(history.len(), 7);
    assert_eq!(history.last().unwrap().new, ParamValue::FloatList(vec![1.5, -2.0]));
    let set = params
        .set(&name("arms.goal_time_slow"), &ParamValue::Float(1.0))
        .await
        .unwrap();
    assert_eq!(set.version, 3);
}

#[cfg(feature = "yaml")]
/// Text from a command line is read with the parameter's type: strings as given, the rest as YAML.
#[tokio::test]
async fn parse_value_uses_the_type() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let param = |text: &'static str| {
        let params = params.clone();
        async move { params.get(&name(text)).await.unwrap().unwrap() }
    };
    assert_eq!(
        param("arms.pose").await.parse_value("42").unwrap(),
        ParamValue::from("42")
    );
    assert_eq!(
        param("arms.goal_time_slow").await.parse_value("3").unwrap(),
        ParamValue::Float(3.0)
    );
    assert_eq!(
        param("arms.home").await.parse_value("[1, 2.5]").unwrap(),
        ParamValue::FloatList(vec![1.0, 2.5])
    );
    assert_eq!(
        param("arms.offset_num")
            .await
            .parse_value("two")
            .unwrap_err()
            .to_string(),
        "arms.offset_num: expected an int, got the string \"two\""
    );
}

#[cfg(feature = "yaml")]
/// Issue #14 point 13: deeply nested YAML is refused before the parser sees it, in well under a
/// second (the parser alone took 48 s on 200 KB), with the line number; nothing is written.
#[tokio::test]
async fn issue_14_deep_nesting_is_refused_fast() {
    let (_server, params) = params().await;
    let levels = 100_000;
    let file = format!("ok: 1\ndeep: {}{}\n", "[".repeat(levels), "]".repeat(levels));
    let started = std::time::Instant::now();
    let err = params.load(&file, &all()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, tatbot_state::Error::InvalidInput(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "line 2: maps and lists nest deeper than 72 levels; a parameter file needs one level per name segment"
    );
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(params.get(&name("ok")).await.unwrap().is_none());
}

#[cfg(feature = "yaml")]
/// Issue #14 point 13: a tag outside the core schema is refused with its line number instead
/// of being dropped (`!!binary aGk=` used to load as the string "aGk="); core tags still apply.
#[tokio::test]
async fn issue_14_unknown_tags_are_refused_with_the_line() {
    let (_server, params) = params().await;
    for (file, line, tag) in [
        ("a: 1\nblob: !!binary aGk=\n", 2, "!!binary"),
        (
            "a: 1\nb: 2\nrun: !!python/object:os.system x\n",
            3,
            "!!python/object:os.system",
        ),
        ("list: [1, !custom 2]\n", 1, "!custom"),
    ] {
        let err = params.load(file, &all()).await.unwrap_err();
        let line_text = err.to_string();
        assert!(
            line_text.starts_with(&format!("line {line}: unknown YAML tag {tag} (only !!str, "))
                && line_text.contains("remove the tag")
                && !line_text.contains('\n'),
            "{line_text}"
        );
        assert!(params.get(&name("a")).await.unwrap().is_none(), "{file}");
    }
    params.load("s: !!str 3\nf: !!float 1\n", &all()).await.unwrap();
    assert_eq!(value(&params, "s").await, ParamValue::from("3"));
    assert_eq!(value(&params, "f").await, ParamValue::Float(1.0));
}

#[cfg(feature = "yaml")]
/// Issue #14 point 13: a text over the size bound is refused without being parsed.
#[tokio::test]
async fn issue_14_oversized_text_is_refused() {
    let (_server, params) = params().await;
    let file = format!("a: \"{}\"\n", "x".repeat(tatbot_state::params::MAX_LOAD_BYTES));
    let err = params.load(&file, &all()).await.unwrap_err();
    assert!(
        err.to_string().contains("over the limit of 4194304 bytes (4 MiB)"),
        "{err}"
    );
}

/// Issue #14 point 7: one corrupt parameter is reported in its entry and the others list.
#[tokio::test]
async fn corrupt_param_is_reported_per_entry() {
    let (server, state) = setup("hog").await;
    let params = state.params();
    for name in ["a.x", "a.y", "a.z"] {
        params
            .declare(&ParamName::new(name).unwrap(), &Descriptor::new(ParamValue::Int(1)))
            .await
            .unwrap();
    }
    let mut redis = raw(&server).await;
    let () = redis.hset("tatbot:param:a.y", "value", "not json").await.unwrap();
    let huge = format!("\"{}\"", "x".repeat(tatbot_state::model::MAX_DOCUMENT_BYTES + 1));
    let () = redis.hset("tatbot:param:a.z", "descriptor", huge).await.unwrap();
    let entries = params.list_entries(&Prefix::all()).await.unwrap();
    let names: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
    assert_eq!(names, ["a.x", "a.y", "a.z"]);
    assert!(entries[0].value.is_ok());
    let error = |idx: usize| entries[idx].value.as_ref().unwrap_err().to_string();
    assert!(
        error(1).starts_with("tatbot:param:a.y: cannot decode parameter value"),
        "{}",
        error(1)
    );
    assert!(error(2).contains("the limit is"), "{}", error(2));
    assert!(
        params.list(&Prefix::all()).await.is_err(),
        "the strict list still refuses"
    );
}

/// A parameter whose hash holds another client's 5 MiB value is that parameter's error, named,
/// and Redis does not send it: `get`, `list_entries` and the strict `list` each ask the
/// fields' lengths first.
#[tokio::test]
async fn huge_param_values_are_reported_without_being_read() {
    let (server, state) = setup("hog").await;
    let params = state.params();
    for (name, value) in [("b.x", 1), ("b.y", 2), ("b.z", 3)] {
        params
            .declare(&ParamName::new(name).unwrap(), &Descriptor::new(ParamValue::Int(value)))
            .await
            .unwrap();
    }
    let huge = format!("\"{}\"", "x".repeat(5 << 20));
    let () = raw(&server)
        .await
        .hset("tatbot:param:b.y", "value", huge)
        .await
        .unwrap();
    let sent_before = bytes_sent(&server);
    let err = params.get(&ParamName::new("b.y").unwrap()).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("tatbot:param:b.y: stored value is corrupt (field value is 5242882 bytes;"),
        "{err}"
    );
    let entries = params.list_entries(&Prefix::all()).await.unwrap();
    assert_eq!(entries[0].value.as_ref().unwrap().value, ParamValue::Int(1));
    let error = entries[1].value.as_ref().unwrap_err().to_string();
    assert!(error.contains("field value is 5242882 bytes"), "{error}");
    // The one read after the one left out gets its own answer.
    assert_eq!(entries[2].id, "b.z");
    assert_eq!(entries[2].value.as_ref().unwrap().value, ParamValue::Int(3));
    assert!(params.list(&Prefix::all()).await.is_err());
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 1 << 20, "{sent} bytes sent for three reads");
}

/// `undeclare` removes the parameter and its index entry, a watch sees the removal (op
/// `undeclare`, the last value as `new`), and the name may be declared again, even with another
/// type, starting over at version 1; undeclaring a name that is not declared is not found.
#[tokio::test]
async fn undeclare_removes_and_is_watched() {
    let (_server, params) = params().await;
    declare_arms(&params).await;
    let mut watch = params.watch(&all()).await.unwrap();
    let removed = params.undeclare(&name("arms.pose")).await.unwrap();
    assert_eq!(removed.value, ParamValue::String("ready".to_owned()));
    assert_eq!(params.get(&name("arms.pose")).await.unwrap(), None);
    let names: Vec<String> = params
        .list(&all())
        .await
        .unwrap()
        .into_iter()
        .map(|param| param.name.to_string())
        .collect();
    assert!(!names.contains(&"arms.pose".to_owned()), "{names:?}");
    let change = next(&mut watch).await;
    assert_eq!(
        (change.name.as_str(), change.op, change.version, change.new),
        (
            "arms.pose",
            ChangeOp::Undeclare,
            removed.version + 1,
            ParamValue::String("ready".to_owned())
        )
    );
    let again = params
        .declare(&name("arms.pose"), &Descriptor::new(3_i64))
        .await
        .unwrap();
    assert_eq!((again.version, again.descriptor.param_type), (1, ParamType::Int));
    assert!(matches!(
        params.undeclare(&name("arms.nope")).await,
        Err(tatbot_state::Error::ParamNotFound(_))
    ));
}

/// A change that could not be audited or indexed is refused before anything is written: with
/// another client's value under the audit log, the index or the seq counter, `set`, `declare`
/// and `undeclare` fail with `Corrupt` naming that key, and the parameter stays as it was
/// (before, the value was stored and the call failed with WRONGTYPE when it came to the log).
#[tokio::test]
async fn changes_that_cannot_be_audited_are_refused_whole() {
    let (server, params) = params().await;
    let goal = name("arms.goal");
    params
        .declare(&goal, &Descriptor::new(1.0).range(0.0, 5.0))
        .await
        .unwrap();
    let mut redis = raw(&server).await;
    let used_up = ["XADD", "18446744073709551615-18446744073709551615", "a", "b"];
    // One id left: a batch of two would have stored its second change without an audit entry.
    let nearly_used_up = ["XADD", "18446744073709551615-18446744073709551614", "a", "b"];
    for (key, damage) in [
        (tatbot_state::keys::PARAM_LOG, &["SET", "not a stream"][..]),
        (tatbot_state::keys::PARAM_LOG, &used_up[..]),
        (tatbot_state::keys::PARAM_LOG, &nearly_used_up[..]),
        (tatbot_state::keys::PARAM_INDEX, &["SET", "not an index"][..]),
        (tatbot_state::keys::PARAM_SEQ, &["SET", "not a counter"][..]),
        // Numbers to Lua, not integers to INCR.
        (tatbot_state::keys::PARAM_SEQ, &["SET", "1.5"][..]),
        (tatbot_state::keys::PARAM_SEQ, &["SET", "007"][..]),
        // Audit entries number from 1.
        (tatbot_state::keys::PARAM_SEQ, &["SET", "-5"][..]),
    ] {
        let saved: Vec<u8> = redis::cmd("DUMP").arg(key).query_async(&mut redis).await.unwrap();
        let _: i64 = redis.del(key).await.unwrap();
        let mut command = redis::cmd(damage[0]);
        command.arg(key).arg(&damage[1..]);
        let _: redis::Value = command.query_async(&mut redis).await.unwrap();
        for outcome in [
            params.set(&goal, &ParamValue::Float(2.0)).await.map(|_| ()),
            params
                .declare(&name("arms.other"), &Descriptor::new(1_i64))
                .await
                .map(|_| ()),
            params.undeclare(&goal).await.map(|_| ()),
        ] {
            match outcome {
                Err(tatbot_state::Error::Corrupt { key: corrupt, .. }) => assert_eq!(corrupt, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        let _: i64 = redis.del(key).await.unwrap();
        let () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(saved)
            .query_async(&mut redis)
            .await
            .unwrap();
        let stored = params.get(&goal).await.unwrap().expect("still declared");
        assert_eq!((stored.value, stored.version), (ParamValue::Float(1.0), 1), "{key}");
        assert!(params.get(&name("arms.other")).await.unwrap().is_none(), "{key}");
    }
}
