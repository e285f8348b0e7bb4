//! Outputs are safe by default (docs/cli.md, "Outputs"): devices, FIFOs and sockets are
//! never replaced, an existing file only with `--force`, a missing directory is created
//! with a note, staging files are private and unnamed (a killed run leaves nothing),
//! named staging files of dead processes are removed by the next run, an output to
//! standard output has no name while it is written out, and an external data location
//! is never written over the model or another output.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use onnx_protect_format::testutil::{external_float_tensor, float_tensor, matmul_chain};
use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};

use crate::util::{bin, keygen_in as keygen, mlp, path_str as s, run};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The commands that write a model to `out` (`dir` holds the key and a protected model).
fn model_writers(dir: &Path, out: &Path) -> Vec<Vec<String>> {
    let key = keygen(dir);
    let protected = dir.join("protected.onnx");
    let (code, _, err) = run(&["encrypt", s(&mlp()), "-o", s(&protected), "--key-file", s(&key), "-q"]);
    assert_eq!(code, 0, "{err}");
    let new_key = dir.join("new-key");
    let (code, _, err) = run(&["keygen", "-o", s(&new_key), "-q"]);
    assert_eq!(code, 0, "{err}");
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    vec![
        v(&["encrypt", s(&mlp()), "-o", s(out), "--key-file", s(&key)]),
        v(&["decrypt", s(&protected), "-o", s(out), "--key-file", s(&key)]),
        v(&["rekey", s(&protected), "-o", s(out), "--key-file", s(&key), "--new-key-file", s(&new_key)]),
        v(&["rewrap", s(&protected), "-o", s(out), "--key-file", s(&key), "--add-key-file", s(&new_key)]),
    ]
}

fn run_owned(args: &[String]) -> (i32, String, String) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a)
}

#[test]
fn devices_fifos_and_sockets_are_never_replaced_even_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let null_link = dir.path().join("null-link");
    std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
    let null = PathBuf::from("/dev/null");
    let placeholder = dir.path().join("TARGET");
    let writers = model_writers(dir.path(), &placeholder);
    for target in [&null, &fifo, &sock, &null_link] {
        for cmd in &writers {
            let mut cmd: Vec<String> =
                cmd.iter().map(|a| if *a == s(&placeholder) { s(target).to_string() } else { a.clone() }).collect();
            for force in [false, true] {
                if force {
                    cmd.push("--force".into());
                }
                let (code, _, err) = run_owned(&cmd);
                assert_eq!(code, 1, "{cmd:?}: {err}");
                assert!(err.contains("not a regular file") && err.contains("standard output"), "{cmd:?}: {err}");
            }
        }
    }
    // All still what they were (the command never opened the FIFO, or it would hang).
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    assert!(std::fs::symlink_metadata(&null_link).unwrap().file_type().is_symlink());
    // Streaming is what -o - is for.
    let key = dir.path().join("key");
    let out = Command::new(bin())
        .args(["encrypt", s(&mlp()), "-o", "-", "--key-file", s(&key)])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.len() > 70_000);
}

#[test]
fn an_existing_output_is_replaced_only_with_force_even_a_read_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    for cmd in model_writers(dir.path(), &out) {
        std::fs::write(&out, b"precious").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o444)).unwrap();
        let (code, _, err) = run_owned(&cmd);
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("exists; pass --force"), "{cmd:?}: {err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"precious", "{cmd:?}");
        let mut forced = cmd.clone();
        forced.push("--force".into());
        let (code, _, err) = run_owned(&forced);
        assert_eq!(code, 0, "{forced:?}: {err}");
        assert_ne!(std::fs::read(&out).unwrap(), b"precious", "{forced:?}");
        // A replaced file keeps its permission bits.
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o444, "{forced:?}");
        std::fs::remove_file(&out).unwrap();
    }
    // Files a command writes itself follow the same rule: key files are never replaced.
    let key = dir.path().join("key");
    let before = std::fs::read(&key).unwrap();
    assert_eq!(run(&["keygen", "-o", s(&key)]).0, 1);
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn a_missing_output_directory_is_created_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let out = dir.path().join("a/b/out.onnx");
    let (code, _, err) = run(&["encrypt", s(&mlp()), "-o", s(&out), "--key-file", s(&key)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_file());
    assert_eq!(err.trim(), format!("note: created directory {}", dir.path().join("a/b").display()));
    // -q prints nothing, and an existing directory gets no note.
    let out2 = dir.path().join("c/out.onnx");
    let (code, stdout, err) = run(&["encrypt", s(&mlp()), "-o", s(&out2), "--key-file", s(&key), "-q"]);
    assert_eq!((code, stdout.as_str(), err.as_str()), (0, "", ""));
    let (code, _, err) = run(&["decrypt", s(&out2), "-o", s(&dir.path().join("c/back.onnx")), "--key-file", s(&key)]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("note:"), "{err}");
    // The same for key files and batch output directories.
    let (code, _, err) = run(&["keygen", "-o", s(&dir.path().join("keys/k"))]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: created directory"), "{err}");
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::copy(mlp(), models.join("mlp.onnx")).unwrap();
    let batch_out = dir.path().join("batch/out");
    let (code, _, err) =
        run(&["batch", "encrypt", "--dir", s(&models), "--out-dir", s(&batch_out), "--key-file", s(&key)]);
    assert_eq!(code, 0, "{err}");
    assert!(batch_out.join("mlp.onnx").is_file());
    assert!(err.contains(&format!("note: created directory {}", batch_out.display())), "{err}");
}

#[test]
fn batch_replaces_only_outputs_its_own_records_name_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let other_key = dir.path().join("other-key");
    assert_eq!(run(&["keygen", "-o", s(&other_key), "-q"]).0, 0);
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::copy(mlp(), models.join("mlp.onnx")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // A file of the user's where the batch would write: the file fails, nothing replaced.
    std::fs::write(out.join("mlp.onnx"), b"mine").unwrap();
    let batch = |k: &Path, extra: &[&str]| {
        let mut a = vec!["batch", "encrypt", "--dir", s(&models), "--out-dir", s(&out), "--key-file", s(k), "--json"];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (code, stdout, _) = batch(&key, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("exists; pass --force"), "{stdout}");
    assert_eq!(std::fs::read(out.join("mlp.onnx")).unwrap(), b"mine");
    // --force replaces it.
    let (code, stdout, _) = batch(&key, &["--force"]);
    assert_eq!(code, 0, "{stdout}");
    assert_ne!(std::fs::read(out.join("mlp.onnx")).unwrap(), b"mine");
    // A later run with other settings (another key) redoes the file: the output is the
    // batch's own (its record names it), so no --force is needed.
    let before = std::fs::read(out.join("mlp.onnx")).unwrap();
    let (code, stdout, _) = batch(&other_key, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("\"status\":\"ok\""), "{stdout}");
    assert_ne!(std::fs::read(out.join("mlp.onnx")).unwrap(), before);
}

/// Writes a model `y = x · W` whose FLOAT initializer `W` (`rows` × 1024) is `rows` × 4
/// KiB of `raw_data`, streamed to the file (no copy of the weights in memory).
fn write_big_model(path: &Path, rows: u64) {
    use std::io::Write;
    let raw_len = rows * 4096;
    let mut tensor_head = Vec::new();
    for d in [rows, 1024] {
        put_tag(&mut tensor_head, 1, WireType::Varint);
        put_varint(&mut tensor_head, d);
    }
    put_tag(&mut tensor_head, 2, WireType::Varint);
    put_varint(&mut tensor_head, 1);
    put_len_field(&mut tensor_head, 8, b"W");
    put_tag(&mut tensor_head, 9, WireType::Len);
    put_varint(&mut tensor_head, raw_len);
    let tensor_len = tensor_head.len() as u64 + raw_len;
    let mut graph_head = Vec::new();
    let mut node = Vec::new();
    for (f, v) in [(1, "x"), (1, "W"), (2, "y"), (3, "mm"), (4, "MatMul")] {
        put_len_field(&mut node, f, v.as_bytes());
    }
    put_len_field(&mut graph_head, 1, &node);
    put_len_field(&mut graph_head, 2, b"big");
    put_tag(&mut graph_head, 5, WireType::Len);
    put_varint(&mut graph_head, tensor_len);
    let mut graph_tail = Vec::new();
    for (f, v) in [(11, "x"), (12, "y")] {
        let mut vi = Vec::new();
        put_len_field(&mut vi, 1, v.as_bytes());
        put_len_field(&mut graph_tail, f, &vi);
    }
    let graph_len = graph_head.len() as u64 + tensor_len + graph_tail.len() as u64;
    let mut head = Vec::new();
    put_tag(&mut head, 1, WireType::Varint);
    put_varint(&mut head, 8);
    let mut opset = Vec::new();
    put_tag(&mut opset, 2, WireType::Varint);
    put_varint(&mut opset, 17);
    put_len_field(&mut head, 8, &opset);
    put_tag(&mut head, 7, WireType::Len);
    put_varint(&mut head, graph_len);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&head).unwrap();
    f.write_all(&graph_head).unwrap();
    f.write_all(&tensor_head).unwrap();
    let row: Vec<u8> = (0..1024u32).flat_map(|i| ((i % 97) as f32 * 0.01 - 0.4).to_le_bytes()).collect();
    for _ in 0..rows {
        f.write_all(&row).unwrap();
    }
    f.write_all(&graph_tail).unwrap();
    f.flush().unwrap();
}

/// The descriptors of process `pid` open on unnamed files of `dir` (O_TMPFILE files show
/// as `DIR/#INODE (deleted)`), with their sizes and permission bits.
fn unnamed_files_of(pid: u32, dir: &Path) -> Vec<(u64, u32)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let prefix = format!("{}/#", dir.display());
    let mut out = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        let t = target.to_string_lossy();
        if t.starts_with(&prefix) && t.ends_with(" (deleted)") {
            if let Ok(m) = std::fs::metadata(fd.path()) {
                out.push((m.len(), m.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

/// `kill -9` in the middle of a big encryption leaves nothing in the output directory:
/// the staging file has no name, and was private (0600) while it was written.
fn a_killed_encryption_leaves_nothing_in(base: &Path) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let key = keygen(dir.path());
    let model = dir.path().join("big.onnx");
    write_big_model(&model, 48 * 1024); // 192 MiB of weights
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut child = Command::new(bin())
        .args(["encrypt", s(&model), "-o", s(&out_dir.join("big.onnx")), "--key-file", s(&key)])
        .args(["--mode", "*=ctr", "--coefficient", "*=1", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the staging file holds data, then kill the process.
    let seen = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("encrypt ended ({status}) before its staging file was seen");
        }
        let files = unnamed_files_of(child.id(), &out_dir);
        if let Some(f) = files.into_iter().find(|&(len, _)| len > 0) {
            break f;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert!(names(&out_dir).is_empty(), "a staging file has a name: {:?}", names(&out_dir));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen.1, 0o600, "staging file mode {:o}", seen.1);
    assert!(names(&out_dir).is_empty(), "left behind: {:?}", names(&out_dir));
    let mut left = names(dir.path());
    left.retain(|n| n != "key");
    assert_eq!(left, ["big.onnx", "out"]);
}

#[test]
fn a_killed_encryption_leaves_nothing_on_the_default_file_system() {
    a_killed_encryption_leaves_nothing_in(&std::env::temp_dir());
}

#[test]
fn a_killed_encryption_leaves_nothing_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for this test");
    a_killed_encryption_leaves_nothing_in(shm);
}

/// Everything under `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry")) {
        out.push(e.path());
        if e.file_type().expect("type").is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out
}

/// `encrypt -o -` and `rekey -o -` stage their output as every output is staged, and
/// the name it gets once complete is gone before its first byte leaves: while a reader
/// holds the command up (a full pipe), `$TMPDIR` holds nothing (what a process killed
/// before that point left there is removed), and `kill -9` then leaves nothing behind.
#[test]
fn an_output_to_standard_output_has_no_name_while_it_is_written_out() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let model = dir.path().join("big.onnx");
    write_big_model(&model, 1024); // 4 MiB of weights: far more than a pipe holds
    let protected = dir.path().join("protected.onnx");
    let (code, _, err) = run(&["encrypt", s(&model), "-o", s(&protected), "--key-file", s(&key), "-q"]);
    assert_eq!(code, 0, "{err}");
    let new_key = dir.path().join("new-key");
    let (code, _, err) = run(&["keygen", "-o", s(&new_key), "-q"]);
    assert_eq!(code, 0, "{err}");
    for args in [
        vec!["encrypt", s(&model), "-o", "-", "--key-file", s(&key), "-q"],
        vec!["rekey", s(&protected), "-o", "-", "--key-file", s(&key), "--new-key-file", s(&new_key), "-q"],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join(".onnx-protect-4000000-0-1a2b.dir");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("stdout.onnx"), b"a dead process's output").unwrap();
        let mut child = Command::new(bin())
            .args(&args)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first byte: the output is complete and being written out, until the pipe
        // is full.
        let mut first = [0u8; 1];
        child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
        let named = tree(tmp.path());
        assert!(child.try_wait().unwrap().is_none(), "{}: ended with a full pipe", args[0]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(named.is_empty(), "{}: named while written out: {named:?}", args[0]);
        assert!(tree(tmp.path()).is_empty(), "{}: left behind: {:?}", args[0], tree(tmp.path()));
    }
}

#[test]
fn named_staging_files_of_dead_processes_are_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // As a process killed on a file system without O_TMPFILE leaves them: named, unlocked.
    let dead = out_dir.join(".onnx-protect-4000000-0-1a2b.tmp");
    std::fs::write(&dead, vec![7u8; 4096]).unwrap();
    // One whose process is alive (it holds the lock): kept.
    let live = out_dir.join(".onnx-protect-4000001-0-3c4d.tmp");
    std::fs::write(&live, b"in use").unwrap();
    let mut holder = Command::new("flock").arg("--no-fork").arg(&live).args(["sleep", "600"]).spawn().unwrap();
    while Command::new("flock")
        .args(["--nonblock", "--conflict-exit-code", "9"])
        .arg(&live)
        .arg("true")
        .status()
        .unwrap()
        .code()
        != Some(9)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (code, _, err) = run(&["encrypt", s(&mlp()), "-o", s(&out_dir.join("m.onnx")), "--key-file", s(&key)]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(!dead.exists());
    assert!(live.exists());
    assert_eq!(names(&out_dir), [".onnx-protect-4000001-0-3c4d.tmp", "m.onnx"]);
}

#[test]
fn an_external_location_is_never_written_over_the_model_or_another_output() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let bytes: Vec<u8> = (0..64u32).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    std::fs::write(src.join("w.bin"), &bytes).unwrap();
    std::fs::write(src.join("out.onnx"), &bytes).unwrap();
    let encrypt = |model: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec!["encrypt", s(model), "-o", s(out), "--key-file", s(&key), "--coefficient", "*=1"];
        a.extend_from_slice(extra);
        run(&a)
    };
    let new_out = || {
        let d = tempfile::tempdir_in(dir.path()).unwrap();
        let o = d.path().join("out.onnx");
        (d, o)
    };

    // 1. The location names the model file itself: refused when the model is read.
    let own = src.join("own.onnx");
    std::fs::write(&own, matmul_chain(&[external_float_tensor("W0", &[2, 2], "own.onnx", 0, 16)])).unwrap();
    let before = std::fs::read(&own).unwrap();
    let (d, o) = new_out();
    let (code, _, err) = encrypt(&own, &o, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("names the model file itself"), "{err}");
    assert!(names(d.path()).is_empty());
    let (code, _, err) = encrypt(&own, &own, &["--in-place"]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(std::fs::read(&own).unwrap(), before);

    // 2. The location is the output's file name: the side file would be written over the
    //    output model.
    let m = src.join("m.onnx");
    std::fs::write(&m, matmul_chain(&[external_float_tensor("W0", &[8, 8], "out.onnx", 0, 256)])).unwrap();
    let (d, o) = new_out();
    let (code, _, err) = encrypt(&m, &o, &["--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("would both be written"), "{err}");
    assert!(names(d.path()).is_empty());

    // 3. Two locations that name one file in the output directory (a symbolic link there).
    let two = src.join("two.onnx");
    std::fs::write(src.join("v.bin"), &bytes).unwrap();
    std::fs::write(
        &two,
        matmul_chain(&[
            external_float_tensor("W0", &[8, 8], "w.bin", 0, 256),
            external_float_tensor("W1", &[8, 8], "v.bin", 0, 256),
        ]),
    )
    .unwrap();
    let (d, o) = new_out();
    std::fs::write(d.path().join("w.bin"), b"x").unwrap();
    std::os::unix::fs::symlink("w.bin", d.path().join("v.bin")).unwrap();
    let (code, _, err) = encrypt(&two, &o, &["--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("would both be written"), "{err}");
    assert_eq!(std::fs::read(d.path().join("w.bin")).unwrap(), b"x");

    // 4. An output side file that is (through a link) the input's side file.
    let (d, o) = new_out();
    std::os::unix::fs::symlink(src.join("w.bin"), d.path().join("w.bin")).unwrap();
    let one = src.join("one.onnx");
    std::fs::write(&one, matmul_chain(&[external_float_tensor("W0", &[8, 8], "w.bin", 0, 256)])).unwrap();
    let (code, _, err) = encrypt(&one, &o, &["--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("over a file of the input model"), "{err}");
    assert_eq!(std::fs::read(src.join("w.bin")).unwrap(), bytes);

    // 5. Two tensors sharing bytes of one side file: encrypting one would change the other.
    let shared = src.join("shared.onnx");
    std::fs::write(
        &shared,
        matmul_chain(&[
            external_float_tensor("W0", &[8, 8], "w.bin", 0, 256),
            external_float_tensor("W1", &[2, 2], "w.bin", 240, 16),
            float_tensor("W2", &[2, 2], &[1.0; 4]),
        ]),
    )
    .unwrap();
    let (d, o) = new_out();
    let (code, _, err) = encrypt(&shared, &o, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("share bytes of an external data file"), "{err}");
    assert!(names(d.path()).is_empty());
    assert_eq!(std::fs::read(src.join("w.bin")).unwrap(), bytes);
}
