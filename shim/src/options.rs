//! The runtime options containerd hands a task: the path of a TOML file (`ConfigPath` in
//! containerd's runtime configuration, `ctr run --runtime-config-path`) whose settings
//! apply to every container of that runtime.
//!
//! ```toml
//! verify_key = "/etc/wasmvm/release.pub"   # run only images signed by this key
//! ```

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, rt::WireType};

/// containerd's `runtimeoptions.v1.Options` (ctr and CRI for runtimes other than runc):
/// `type_url` = 1, `config_path` = 2, `config_body` = 3.
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
/// runc's options type, which a configuration may send to every runtime: nothing in it is
/// for us.
const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// An Ed25519 public key (`wasmvm key generate`): images not signed by it are refused.
    pub verify_key: Option<PathBuf>,
}

impl Settings {
    /// The settings the task's options point at; none without a file.
    pub fn from_task_options(options: Option<&Any>) -> Result<Settings, String> {
        let Some(any) = options else {
            return Ok(Settings::default());
        };
        let kind = any.type_url.rsplit('/').next().unwrap_or("");
        if kind == RUNC_OPTIONS || any.value.is_empty() {
            return Ok(Settings::default());
        }
        if kind != RUNTIME_OPTIONS {
            return Err(format!(
                "runtime options of type `{}` are not understood (expected {RUNTIME_OPTIONS})",
                any.type_url
            ));
        }
        let (path, body) = runtime_options(&any.value)
            .map_err(|e| format!("the runtime options are malformed: {e}"))?;
        match (path, body) {
            (_, Some(body)) if !body.trim().is_empty() => {
                Settings::parse(&body, Path::new("the inline runtime configuration"))
            }
            (Some(path), _) if !path.is_empty() => Settings::load(Path::new(&path)),
            _ => Ok(Settings::default()),
        }
    }

    pub fn load(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the runtime configuration {}: {e}",
                path.display()
            )
        })?;
        Settings::parse(&text, path)
    }

    fn parse(text: &str, origin: &Path) -> Result<Settings, String> {
        let settings: Settings =
            toml::from_str(text).map_err(|e| format!("{}: {}", origin.display(), e.message()))?;
        if let Some(key) = &settings.verify_key
            && !key.is_absolute()
        {
            return Err(format!(
                "{}: verify_key must be an absolute path, not `{}`",
                origin.display(),
                key.display()
            ));
        }
        Ok(settings)
    }
}

/// `config_path` and `config_body` of a `runtimeoptions.v1.Options`.
fn runtime_options(bytes: &[u8]) -> Result<(Option<String>, Option<String>), String> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (None, None);
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire) = (tag >> 3, WireType::new(tag & 7).ok_or("bad wire type")?);
        match (field, wire) {
            (2, WireType::LengthDelimited) => {
                path = Some(input.read_string().map_err(|e| e.to_string())?)
            }
            (3, WireType::LengthDelimited) => {
                let raw = input.read_bytes().map_err(|e| e.to_string())?;
                body = Some(String::from_utf8(raw).map_err(|_| "config_body is not UTF-8")?);
            }
            _ => input.skip_field(wire).map_err(|e| e.to_string())?,
        }
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    /// `runtimeoptions.v1.Options{type_url: "x", config_path: path}`, encoded by hand.
    fn encoded(path: &str) -> Vec<u8> {
        let mut v = vec![0x0a, 1, b'x', 0x12, path.len() as u8];
        v.extend_from_slice(path.as_bytes());
        v
    }

    #[test]
    fn a_config_path_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shim.toml");
        std::fs::write(&file, "verify_key = \"/etc/wasmvm/k.pub\"\n").unwrap();
        let opts = any("runtimeoptions.v1.Options", encoded(file.to_str().unwrap()));
        let s = Settings::from_task_options(Some(&opts)).unwrap();
        assert_eq!(
            s.verify_key.as_deref(),
            Some(Path::new("/etc/wasmvm/k.pub"))
        );

        std::fs::write(&file, "verify_kee = \"/k\"\n").unwrap();
        let e = Settings::from_task_options(Some(&opts)).unwrap_err();
        assert!(e.contains("verify_kee"), "{e}");
        std::fs::write(&file, "verify_key = \"k.pub\"\n").unwrap();
        let e = Settings::from_task_options(Some(&opts)).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        std::fs::remove_file(&file).unwrap();
        let e = Settings::from_task_options(Some(&opts)).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn no_options_and_runc_options_mean_no_settings() {
        assert_eq!(Settings::from_task_options(None), Ok(Settings::default()));
        let runc = any("containerd.runc.v1.Options", vec![0x10, 1]);
        assert_eq!(
            Settings::from_task_options(Some(&runc)),
            Ok(Settings::default())
        );
        let other = any("example.Other", vec![1]);
        assert!(Settings::from_task_options(Some(&other)).is_err());
        let garbage = any("runtimeoptions.v1.Options", vec![0x12, 50, 1]);
        assert!(
            Settings::from_task_options(Some(&garbage))
                .unwrap_err()
                .contains("malformed")
        );
    }
}
