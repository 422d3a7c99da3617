//! `berth generate man|completions DIR` (hidden): man pages and shell completions made from
//! the command-line definition itself, so they never drift from what berth accepts. The
//! packages run it at build time.

use std::path::{Path, PathBuf};

use berth_runtime::error::Error;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

#[derive(Clone, Copy, ValueEnum)]
pub enum What {
    /// berth.1 and one page per verb (berth-exec.1, ...)
    Man,
    /// bash/berth, zsh/_berth, fish/berth.fish
    Completions,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    what: What,
    /// Directory to write into (created if missing)
    dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io("cannot write", path, e)
}

pub fn run<C: CommandFactory>(a: GenerateArgs) -> Result<i32, Error> {
    std::fs::create_dir_all(&a.dir).map_err(io(&a.dir))?;
    let cmd = C::command();
    match a.what {
        What::Man => clap_mangen::generate_to(cmd, &a.dir).map_err(io(&a.dir))?,
        What::Completions => {
            for (shell, sub, file) in [
                (Shell::Bash, "bash", "berth"),
                (Shell::Zsh, "zsh", "_berth"),
                (Shell::Fish, "fish", "berth.fish"),
            ] {
                let dir = a.dir.join(sub);
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let path = dir.join(file);
                let mut out = std::fs::File::create(&path).map_err(io(&path))?;
                clap_complete::generate(shell, &mut cmd.clone(), "berth", &mut out);
            }
        }
    }
    Ok(0)
}
