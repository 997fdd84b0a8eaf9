//! The sysctl guard: a value set for the benchmark and put back afterwards,
//! also on error or Ctrl-C.

use std::fs;

use anyhow::Context as _;

/// A sysctl set for the benchmark and put back afterwards.
pub(super) struct Sysctl {
    path: &'static str,
    pub(super) previous: String,
    restored: bool,
}

impl Sysctl {
    pub(super) fn set(path: &'static str, value: &str) -> anyhow::Result<Self> {
        let previous = fs::read_to_string(path)
            .with_context(|| format!("cannot read {path}"))?
            .trim()
            .to_owned();
        fs::write(path, value).with_context(|| format!("cannot write {value} to {path}"))?;
        Ok(Self {
            path,
            previous,
            restored: false,
        })
    }

    pub(super) fn restore(&mut self) -> anyhow::Result<()> {
        if !self.restored {
            fs::write(self.path, &self.previous)
                .with_context(|| format!("cannot restore {} to {}", self.path, self.previous))?;
            self.restored = true;
        }
        Ok(())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(error) = self.restore() {
            eprintln!("bench: {error:#}");
        }
    }
}
