//! Reading Hugging Face JSON files (`config.json`, `tokenizer_config.json`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ConvertError;

/// A parsed JSON file that remembers its path for error messages.
pub struct JsonFile {
    pub path: PathBuf,
    pub json: Value,
}

impl JsonFile {
    pub fn open(path: &Path) -> Result<JsonFile, ConvertError> {
        let io = |error| ConvertError::Io {
            path: path.to_owned(),
            error,
        };
        // A FIFO would block, a device read forever.
        llava_runtime::files::regular_file(path).map_err(io)?;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let json = serde_json::from_str(&text).map_err(|e| ConvertError::Input {
            path: path.to_owned(),
            reason: format!("invalid JSON: {e}"),
        })?;
        Ok(JsonFile {
            path: path.to_owned(),
            json,
        })
    }

    /// Opens `path` if it exists.
    pub fn open_optional(path: &Path) -> Result<Option<JsonFile>, ConvertError> {
        if path.exists() {
            Self::open(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A value at a dotted path (`rope_parameters.rope_theta`), if present and not null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        key.split('.')
            .try_fold(&self.json, |v, k| v.get(k))
            .filter(|v| !v.is_null())
    }

    fn error(&self, key: &str, reason: &str) -> ConvertError {
        ConvertError::Config {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, ConvertError> {
        self.usize_opt(key)?
            .ok_or_else(|| self.error(key, "missing"))
    }

    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.error(key, "expected a non-negative integer")),
        }
    }

    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.error(key, "expected a number")),
        }
    }

    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.error(key, "expected true or false")),
        }
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&str>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, "expected a string")),
        }
    }
}
