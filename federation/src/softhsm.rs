//! SoftHSM2 tokens for tests and benchmarks of keys in PKCS#11 tokens: a token directory of its
//! own (named by `SOFTHSM2_CONF`, which whoever loads the module must be given too), tokens made
//! with `softhsm2-util`, keys written into them with OpenSC's `pkcs11-tool`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::Error;

/// Where distributions put SoftHSM2's PKCS#11 module (Debian's first).
pub const SOFTHSM_MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// A SoftHSM2 token directory in a directory of the caller's, and the module that serves it.
#[derive(Debug, Clone)]
pub struct SoftHsm {
    dir: PathBuf,
    conf: PathBuf,
    module: PathBuf,
}

impl SoftHsm {
    /// The installed SoftHSM2 module, if there is one.
    pub fn installed_module() -> Option<PathBuf> {
        SOFTHSM_MODULES
            .iter()
            .map(PathBuf::from)
            .find(|m| m.is_file())
    }

    /// A token directory `dir/tokens` and its configuration `dir/softhsm2.conf` (no token yet).
    pub fn new(dir: &Path) -> Result<SoftHsm, Error> {
        let module = SoftHsm::installed_module().ok_or_else(|| {
            Error::Tool(
                "the SoftHSM2 module is not installed: apt-get install softhsm2 opensc".into(),
            )
        })?;
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|source| Error::Io {
            op: "create directory",
            path: tokens.clone(),
            source,
        })?;
        let conf = dir.join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        std::fs::write(&conf, text).map_err(|source| Error::Io {
            op: "write",
            path: conf.clone(),
            source,
        })?;
        Ok(SoftHsm {
            dir: dir.to_owned(),
            conf,
            module,
        })
    }

    /// The configuration file: the value of `SOFTHSM2_CONF` for whoever loads the module.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The PKCS#11 module.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// Run `prog args` on this token directory (in `dir`, with `SOFTHSM2_CONF`); an error with
    /// what it printed if it fails.
    pub fn run(&self, prog: &str, args: &[&str]) -> Result<Output, Error> {
        let out = Command::new(prog)
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| Error::Tool(format!("{prog}: {e} (apt-get install softhsm2 opensc)")))?;
        if !out.status.success() {
            return Err(Error::Tool(format!(
                "{prog} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out)
    }

    /// Make a token `label` in the first free slot.
    pub fn init_token(&self, label: &str, pin: &str, so_pin: &str) -> Result<(), Error> {
        self.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                so_pin,
            ],
        )
        .map(drop)
    }

    /// Write the private key `key_pem` into token `token` as object `label` with id `id` (hex);
    /// the key's file is gone again when this returns.
    pub fn import_key(
        &self,
        token: &str,
        pin: &str,
        key_pem: &str,
        label: &str,
        id: &str,
    ) -> Result<(), Error> {
        let file = self.dir.join(format!("{label}.for-token.key"));
        std::fs::write(&file, key_pem).map_err(|source| Error::Io {
            op: "write",
            path: file.clone(),
            source,
        })?;
        let module = self.module.display().to_string();
        let file_s = file.display().to_string();
        let written = self.run(
            "pkcs11-tool",
            &[
                "--module",
                &module,
                "--token-label",
                token,
                "--login",
                "--pin",
                pin,
                "--write-object",
                &file_s,
                "--type",
                "privkey",
                "--label",
                label,
                "--id",
                id,
            ],
        );
        let _ = std::fs::remove_file(&file);
        written.map(drop)
    }
}
