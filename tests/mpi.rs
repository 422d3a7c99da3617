//! MPI images built from defs/ by `berth build` (tests/build-mpi-images.sh, run by
//! tests/run.sh), run the hybrid way on one node: the host's launcher starts each rank with
//! `berth exec IMG berth-mpitest`, the image brings its own MPI.

mod harness;

use harness::world;

fn image(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(p) if std::path::Path::new(&p).exists() => Some(p),
        _ => {
            eprintln!(
                "skipped: {var} is not set (tests/run.sh builds the image with tests/build-mpi-images.sh)"
            );
            None
        }
    }
}

fn check_two_ranks(out: &str) {
    assert!(
        out.contains("rank 0/2 on ") && out.contains("rank 1/2 on "),
        "both ranks report rank/size: {out}"
    );
    assert!(out.contains("allreduce: sum over 2 ranks = 3: ok"), "{out}");
    assert!(out.contains("ring: token passed through 2 ranks: ok"), "{out}");
}

#[test]
fn open_mpi_image_runs_under_the_hosts_mpirun() {
    let w = world();
    let Some(img) = image("BERTH_TEST_OPENMPI_IMAGE") else { return };
    let berth = w.berth.to_str().unwrap();
    let out = w
        .command(
            std::path::Path::new("/usr/bin/mpirun.openmpi"),
            &["--oversubscribe", "-n", "2", berth, "exec", &img, "berth-mpitest", "-q"],
        )
        .env("OMPI_MCA_btl", "self,vader,tcp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    check_two_ranks(&stdout);
    // The image's own MPI answered, not the host's: berth-mpitest runs only inside.
    let os = w
        .run(&[
            "exec",
            &img,
            "sh",
            "-c",
            "grep ^VERSION_CODENAME /etc/os-release; ls /usr/lib/x86_64-linux-gnu/libmpi.so.40",
        ])
        .ok();
    assert!(os.contains("bookworm") && os.contains("libmpi.so.40"), "{os}");
}

#[test]
fn mpich_image_runs_under_the_hosts_hydra() {
    let w = world();
    let Some(img) = image("BERTH_TEST_MPICH_IMAGE") else { return };
    let berth = w.berth.to_str().unwrap();
    let out = w
        .command(
            std::path::Path::new("/usr/bin/timeout"),
            &["120", "/usr/bin/mpirun.mpich", "-n", "2", berth, "exec", &img, "berth-mpitest", "-q"],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    check_two_ranks(&stdout);
}

#[test]
fn built_image_carries_its_definition_and_labels() {
    let w = world();
    let Some(img) = image("BERTH_TEST_OPENMPI_IMAGE") else { return };
    let out = w.run(&["inspect", &img]).ok();
    for needle in ["Bootstrap: debootstrap", "org.label-schema.build-date", "berth-mpitest", "MPI: openmpi"] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
}
