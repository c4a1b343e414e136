//! Interactive runs: `-f` on a terminal draws download and unpack progress bars on stderr; the
//! same run with stderr on a pipe draws none. The terminal is a real pseudo-terminal from `script(1)`.

use std::process::Command;

use crate::common::*;

fn big_zip(nginx: &Nginx) -> String {
    // Incompressible, so the download takes long enough to draw at least once.
    let data: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // And many small files, so the unpacking takes long enough to draw too.
    let mut entries = vec![file("data.bin", data, 0o644)];
    entries.extend((0..3000).map(|i| file(&format!("small/{i}.txt"), format!("{i}\n"), 0o644)));
    zip(&nginx.www.join("app.zip"), &entries);
    nginx.url("/app.zip")
}

#[test]
fn a_terminal_gets_download_and_unpack_bars_and_a_pipe_does_not() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    let url = big_zip(&nginx);
    let bin = env!("CARGO_BIN_EXE_repo-deploy");
    let args = |dir: &str| {
        format!(
            "{bin} -c {} -f -r {url} -d {} --pre-hooks {} --post-hooks {}",
            env.cfg.display(),
            env.root.join(dir).display(),
            env.pre.display(),
            env.post.display()
        )
    };
    let tty = Command::new("script")
        .args(["-qec", &args("tty"), "/dev/null"])
        .env_remove("REPO_DEPLOY_REMOTE")
        .output()
        .expect("script(1) from util-linux runs the agent on a pseudo-terminal");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains("download") && shown.contains("MiB"),
        "no download bar on a terminal: {shown}"
    );
    assert!(
        shown.contains("unpack") && shown.contains("/3001 files"),
        "no unpack bar on a terminal: {shown}"
    );

    let piped = env
        .cmd()
        .deploy_dir(env.root.join("pipe"))
        .args(["-f", "-r", &url])
        .run();
    piped.expect_code(0);
    assert!(
        !piped.stderr.contains("download [") && !piped.stderr.contains("unpack ["),
        "a bar on a pipe: {}",
        piped.dump()
    );
}
