//! High availability from the command line: the Sentinel settings in `config`, and commands
//! that find the master through the test kit's Sentinels and follow a failover.

use crate::util::{assert_code, bin, json, run, stderr, stdout};

/// `config` shows the Sentinel target with a source per field, never the Sentinels' password.
#[test]
fn config_shows_sentinel_settings_and_sources() {
    let mut command = bin();
    command
        .env("REDIS_SENTINELS", "eek:26379,hog")
        .env("REDIS_SENTINEL_PASSWORD", "sentinel-secret");
    let output = run(command, &["--json", "--master-name", "robot", "config"]);
    assert_code(&output, 0);
    assert!(!stdout(&output).contains("sentinel-secret"));
    let config = json(&output);
    assert_eq!(config["sentinels"]["value"], "eek:26379,hog:26379");
    assert_eq!(config["sentinels"]["source"], "environment variable REDIS_SENTINELS");
    assert_eq!(config["master_name"]["value"], "robot");
    assert_eq!(config["master_name"]["source"], "flag --master-name");
    assert_eq!(config["sentinel_password"]["value"], "(set)");

    let output = run(bin(), &["--sentinel", "eek:99999", "config"]);
    assert_code(&output, 6);
    let text = stderr(&output);
    assert!(
        text.contains("flag --sentinel: \"eek:99999\" is not a sentinel address"),
        "{text}"
    );
}
