//! Helpers the config tests share.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
#[cfg(feature = "yaml")]
use std::path::PathBuf;

use crate::config::{ConfigInputs, resolve};

/// A lookup that fails the test if it is ever called.
pub(crate) fn never(host: &str) -> bool {
    panic!("lookup must not be called, but was called for {host:?}")
}

pub(crate) fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("path has a parent")).expect("create dirs");
    fs::write(path, text).expect("write file");
}

/// Inputs with nothing configured, rooted in `dir`, whose default env file does not exist.
pub(crate) fn base(dir: &Path) -> ConfigInputs {
    ConfigInputs {
        cwd: dir.to_path_buf(),
        default_env_file: dir.join("no-such-default.env"),
        ..ConfigInputs::default()
    }
}

pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(feature = "yaml")]
pub(crate) fn write_redis_yaml(conf: &Path, text: &str) -> PathBuf {
    let path = conf.join("redis").join("default.yaml");
    write(&path, text);
    path
}

pub(crate) fn err(inputs: &ConfigInputs) -> String {
    match resolve(inputs, &never) {
        Ok(target) => panic!("expected an error, got {target:?}"),
        Err(error) => error.to_string(),
    }
}

#[cfg(feature = "yaml")]
pub(crate) const HYDRA_YAML: &str = "# @package _global_\ndefaults:\n  - _self_\n_target_: tatbot.Redis\nhost: \"10.1.2.3\"\nport: 6380\npassword: null\nextra: {a: 1}\n";
