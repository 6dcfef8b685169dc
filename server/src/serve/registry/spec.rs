//! Which models a server offers, and how each is loaded: [`ModelSpec`]s gathered from the
//! command line (`--model`, repeatable, with `--served-model-name`s in the same order), from
//! a folder (`--models-dir`: every GGUF file and Hugging Face checkpoint in it) and from a
//! TOML file (`--models-config`) for per-model settings. Pure: reading the folder and the
//! file is the only I/O; nothing is opened or loaded here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::engine::EngineConfig;
use stellarchat_model::model::LoadOptions;
use stellarchat_model::weights::{ActivationFormat, WeightFormat};

/// One model the server offers.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The id clients send and `/v1/models` lists.
    pub id: String,
    /// Other ids that name the same model.
    pub aliases: Vec<String>,
    /// What `ModelLoader::open` takes: a GGUF file, a checkpoint folder, `synthetic:…`.
    pub source: String,
    pub load: LoadOptions,
    pub engine: EngineConfig,
    /// `max_model_len`: the context window enforced (at most the model's own).
    pub max_model_len: Option<usize>,
    pub chat_template: Option<PathBuf>,
    /// Loaded at start-up and never unloaded by the LRU or keep-alive (an admin may).
    pub pinned: bool,
    /// Loaded at start-up (`/ready` waits for it); the first `--model` always is.
    pub preload: bool,
    /// Unloaded after this long without a request; `None`: kept until evicted.
    pub keep_alive: Option<Duration>,
}

/// The settings every model gets unless its own entry says otherwise.
#[derive(Debug, Clone)]
pub struct SpecDefaults {
    pub load: LoadOptions,
    pub engine: EngineConfig,
    pub max_model_len: Option<usize>,
    pub chat_template: Option<PathBuf>,
    pub keep_alive: Option<Duration>,
}

/// Why the set of models is not usable; start-up stops with it.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("--served-model-name is given {names} times for {models} --model flags")]
    TooManyNames { names: usize, models: usize },
    #[error("two models are served as `{0}`: give one of them another name")]
    DuplicateId(String),
    #[error("--pin {0}: no such model (ids: {1})")]
    UnknownPin(String, String),
    #[error("--models-dir {path}: {source}")]
    ModelsDir { path: PathBuf, source: std::io::Error },
    #[error("--models-config {path}: {source}")]
    ConfigRead { path: PathBuf, source: std::io::Error },
    #[error("--models-config {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("no model to serve: --models-dir {0} holds no GGUF file or checkpoint folder")]
    Empty(PathBuf),
}

/// `--models-config`: `[[models]]` tables, each a model with its own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    models: Vec<ConfigEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEntry {
    path: String,
    id: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    device: Option<String>,
    dtype: Option<String>,
    weights: Option<String>,
    activations: Option<String>,
    max_model_len: Option<usize>,
    chat_template: Option<PathBuf>,
    kv_cache_tokens: Option<usize>,
    max_num_seqs: Option<usize>,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    preload: bool,
    keep_alive: Option<u64>,
}

/// The id a path gets: a file's stem (`x.gguf` → `x`), a folder's name.
pub fn id_from_path(source: &str) -> String {
    if source.starts_with("synthetic:") {
        // `synthetic:tiny[:seed]` → `synthetic-tiny`, as `ModelInfo::name` says.
        let preset = source.trim_start_matches("synthetic:").split(':').next().unwrap_or("model");
        return format!("synthetic-{preset}");
    }
    let path = Path::new(source.trim_end_matches('/'));
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

fn spec(source: String, id: Option<String>, defaults: &SpecDefaults) -> ModelSpec {
    ModelSpec {
        id: id.unwrap_or_else(|| id_from_path(&source)),
        aliases: Vec::new(),
        source,
        load: defaults.load,
        engine: defaults.engine,
        max_model_len: defaults.max_model_len,
        chat_template: defaults.chat_template.clone(),
        pinned: false,
        preload: false,
        keep_alive: defaults.keep_alive,
    }
}

/// `--model`s with their `--served-model-name`s (the i-th name is the i-th model's).
pub fn from_flags(models: &[String], names: &[String], defaults: &SpecDefaults) -> Result<Vec<ModelSpec>, SpecError> {
    if names.len() > models.len().max(1) {
        return Err(SpecError::TooManyNames { names: names.len(), models: models.len() });
    }
    Ok(models.iter().enumerate().map(|(i, m)| spec(m.clone(), names.get(i).cloned(), defaults)).collect())
}

/// Every `*.gguf` file and every folder with a `config.json` in `dir`, by name.
pub fn from_dir(dir: &Path, defaults: &SpecDefaults) -> Result<Vec<ModelSpec>, SpecError> {
    let read = std::fs::read_dir(dir).map_err(|source| SpecError::ModelsDir { path: dir.to_path_buf(), source })?;
    let mut paths: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let gguf = p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            gguf || (p.is_dir() && p.join("config.json").is_file())
        })
        .collect();
    paths.sort();
    Ok(paths.into_iter().map(|p| spec(p.to_string_lossy().into_owned(), None, defaults)).collect())
}

/// The models of a `--models-config` TOML file.
pub fn from_config(path: &Path, text: &str, defaults: &SpecDefaults) -> Result<Vec<ModelSpec>, SpecError> {
    let bad = |message: String| SpecError::ConfigParse { path: path.to_path_buf(), message };
    let file: ConfigFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    file.models
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = |key: &str| format!("models[{i}].{key}");
            let mut s = spec(e.path, e.id, defaults);
            s.aliases = e.aliases;
            if let Some(d) = e.device {
                s.load.device = d.parse::<DeviceSpec>().map_err(|err| bad(format!("{}: {err}", at("device"))))?;
            }
            if let Some(d) = e.dtype {
                s.load.precision = d.parse::<Precision>().map_err(|err| bad(format!("{}: {err}", at("dtype"))))?;
            }
            if let Some(w) = e.weights {
                s.load.weights = w.parse::<WeightFormat>().map_err(|err| bad(format!("{}: {err}", at("weights"))))?;
            }
            if let Some(a) = e.activations {
                s.load.activations =
                    a.parse::<ActivationFormat>().map_err(|err| bad(format!("{}: {err}", at("activations"))))?;
            }
            s.max_model_len = e.max_model_len.or(s.max_model_len);
            s.chat_template = e.chat_template.or(s.chat_template);
            if let Some(t) = e.kv_cache_tokens {
                s.engine.kv_cache_tokens = t.max(1);
                s.engine.size_kv_cache_by_device = false;
            }
            if let Some(n) = e.max_num_seqs {
                s.engine.max_num_seqs = n.max(1);
            }
            s.pinned = e.pinned;
            s.preload = e.preload || e.pinned;
            if let Some(k) = e.keep_alive {
                s.keep_alive = Some(Duration::from_secs(k));
            }
            Ok(s)
        })
        .collect()
}

/// Reads a `--models-config` file.
pub fn read_config(path: &Path, defaults: &SpecDefaults) -> Result<Vec<ModelSpec>, SpecError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SpecError::ConfigRead { path: path.to_path_buf(), source })?;
    from_config(path, &text, defaults)
}

/// Checks ids and aliases are unique, applies `--pin`, and preloads the first model.
pub fn finish(mut specs: Vec<ModelSpec>, pins: &[String]) -> Result<Vec<ModelSpec>, SpecError> {
    let mut seen = HashSet::new();
    for name in specs.iter().flat_map(|s| std::iter::once(&s.id).chain(&s.aliases)) {
        if !seen.insert(name.clone()) {
            return Err(SpecError::DuplicateId(name.clone()));
        }
    }
    for pin in pins {
        let spec = specs.iter_mut().find(|s| &s.id == pin || s.aliases.contains(pin));
        let Some(spec) = spec else {
            let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
            return Err(SpecError::UnknownPin(pin.clone(), ids.join(", ")));
        };
        spec.pinned = true;
        spec.preload = true;
    }
    if let Some(first) = specs.first_mut() {
        first.preload = true;
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SpecDefaults {
        SpecDefaults {
            load: LoadOptions::default(),
            engine: EngineConfig::default(),
            max_model_len: None,
            chat_template: None,
            keep_alive: None,
        }
    }

    #[test]
    fn names_follow_models_in_order() {
        let models = vec!["a/x.gguf".to_string(), "b/y.gguf".to_string()];
        let specs = from_flags(&models, &["first".into()], &defaults()).unwrap();
        assert_eq!(specs[0].id, "first");
        assert_eq!(specs[1].id, "y");
        let err = from_flags(&models[..1], &["p".into(), "q".into()], &defaults()).unwrap_err();
        assert!(matches!(err, SpecError::TooManyNames { names: 2, models: 1 }));
        assert_eq!(id_from_path("synthetic:tiny:7"), "synthetic-tiny");
    }

    #[test]
    fn duplicate_ids_and_aliases_are_refused_and_pins_must_exist() {
        let models = vec!["x.gguf".to_string(), "dir/x.gguf".to_string()];
        let specs = from_flags(&models, &[], &defaults()).unwrap();
        assert!(matches!(finish(specs, &[]), Err(SpecError::DuplicateId(id)) if id == "x"));

        let specs = from_flags(&["x.gguf".into(), "y.gguf".into()], &[], &defaults()).unwrap();
        let err = finish(specs.clone(), &["z".into()]).unwrap_err().to_string();
        assert!(err.contains("--pin z") && err.contains("x, y"), "{err}");
        let done = finish(specs, &["y".into()]).unwrap();
        assert!(done[0].preload && !done[0].pinned, "the first model loads at start-up");
        assert!(done[1].pinned && done[1].preload);
    }

    #[test]
    fn config_entries_override_the_defaults() {
        let text = r#"
            [[models]]
            path = "weights/a.gguf"
            aliases = ["small", "default"]
            kv_cache_tokens = 2048
            keep_alive = 30
            activations = "q8"

            [[models]]
            path = "weights/b"
            id = "big"
            device = "ndarray"
            dtype = "f32"
            weights = "dense"
            max_model_len = 512
            pinned = true
        "#;
        let specs = from_config(Path::new("m.toml"), text, &defaults()).unwrap();
        assert_eq!(specs[0].id, "a");
        assert_eq!(specs[0].aliases, vec!["small", "default"]);
        assert_eq!(specs[0].engine.kv_cache_tokens, 2048);
        assert!(!specs[0].engine.size_kv_cache_by_device, "a budget the file gives is kept, not sized");
        assert_eq!(specs[0].keep_alive, Some(Duration::from_secs(30)));
        assert_eq!(specs[0].load.activations, ActivationFormat::Q8);
        assert_eq!(specs[1].load.activations, ActivationFormat::F32);
        assert_eq!(specs[1].id, "big");
        assert_eq!(specs[1].load.device, DeviceSpec::NdArray);
        assert_eq!(specs[1].load.weights, WeightFormat::Dense);
        assert_eq!(specs[1].max_model_len, Some(512));
        assert!(specs[1].pinned && specs[1].preload);
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = from_config(Path::new("m.toml"), "[[models]]\npath = \"a\"\ndevice = \"tpu\"\n", &defaults())
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.toml") && err.contains("models[0].device"), "{err}");
        let err = from_config(Path::new("m.toml"), "[[models]]\npath = \"a\"\ncolour = 1\n", &defaults())
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        let err = from_config(Path::new("m.toml"), "[[models]]\nid = \"a\"\n", &defaults()).unwrap_err().to_string();
        assert!(err.contains("path"), "{err}");
    }

    #[test]
    fn a_models_dir_lists_gguf_files_and_checkpoint_folders() {
        let dir = std::env::temp_dir().join(format!("stellarchat-models-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hf-model")).unwrap();
        std::fs::create_dir_all(dir.join("not-a-model")).unwrap();
        std::fs::write(dir.join("hf-model/config.json"), "{}").unwrap();
        std::fs::write(dir.join("b.gguf"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        let specs = from_dir(&dir, &defaults()).unwrap();
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["b", "hf-model"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(from_dir(&dir, &defaults()), Err(SpecError::ModelsDir { .. })));
    }
}
