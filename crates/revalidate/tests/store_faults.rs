//! Store faults on real files: a damaged store file never panics the
//! process. Opened with `open_verified`, it repairs what redb can repair and
//! reports the rest as corrupt, naming the path, and the records that come
//! back are whole. Opened with `open`, which trusts a cleanly closed file,
//! it fails the same way or hands back the bytes it holds: the record layer
//! above catches damaged records by their checksums (tests/persist.rs).
//! After a full disk writing resumes once space is freed, losing nothing
//! that was acknowledged.

#![cfg(feature = "redb")]

use std::path::Path;

use revalidate::RedbStore;
use revalidate::store::{Batch, Store};

/// A store file holding `n` records of about 1 KiB.
fn filled(path: &Path, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = RedbStore::open(path).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut batch = Batch::default();
        for i in chunk {
            batch.puts.push((
                format!("key-{i:05}").into_bytes(),
                vec![(*i % 251) as u8; 1000],
            ));
        }
        rt.block_on(store.apply(batch)).unwrap();
    }
}

/// A deterministic byte stream (splitmix64), so failures replay.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut z = seed;
    (0..len)
        .map(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (x ^ (x >> 31)) as u8
        })
        .collect()
}

/// A copy of `bytes` in `dir`: a store found damaged is quarantined, its
/// file kept locked by this process, so each open gets its own file.
fn copy_of(bytes: &[u8], dir: &Path) -> std::path::PathBuf {
    let path = dir.join("copy.redb");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens and scans the damaged file: must not panic; with `verified`,
/// records that come back are whole.
fn open_and_scan(path: &Path, verified: bool) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let opened = if verified {
        RedbStore::open_verified(path)
    } else {
        RedbStore::open(path)
    };
    match opened {
        Ok(store) => match rt.block_on(store.scan()) {
            Ok(rows) => {
                for (k, v) in rows.iter().filter(|_| verified) {
                    let i: usize = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
                    assert_eq!(
                        v,
                        &vec![(i % 251) as u8; 1000],
                        "a record came back damaged"
                    );
                }
                Ok(rows.len())
            }
            Err(e) => {
                assert!(e.is_corrupt(), "{e}");
                Err(e.to_string())
            }
        },
        Err(e) => {
            assert!(e.is_corrupt(), "{e:?}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            Err(e.to_string())
        }
    }
}

#[test]
fn the_last_page_overwritten_with_noise() {
    for seed in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        filled(&path, 400);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        bytes[len - 4096..].copy_from_slice(&noise(seed, 4096));
        std::fs::write(&path, &bytes).unwrap();
        let plain = open_and_scan(&copy_of(&bytes, dir.path()), false);
        let outcome = open_and_scan(&path, true);
        eprintln!("seed {seed}: {outcome:?} (plain open: {plain:?})");
    }
}

#[test]
fn one_byte_flipped_in_every_page() {
    for offset in [0usize, 17, 512, 1000, 2049, 4095] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        filled(&path, 400);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = offset;
        while at < bytes.len() {
            bytes[at] ^= 0x5a;
            at += 4096;
        }
        std::fs::write(&path, &bytes).unwrap();
        let plain = open_and_scan(&copy_of(&bytes, dir.path()), false);
        let outcome = open_and_scan(&path, true);
        eprintln!("offset {offset}: {outcome:?} (plain open: {plain:?})");
        if outcome.is_err() {
            // The fix the error names: move it aside (never deleted), start empty.
            let aside = RedbStore::move_aside(&path).unwrap();
            // Kept (redb's repair attempt may have rewritten parts of it).
            assert!(std::fs::metadata(&aside).unwrap().len() > 0, "kept");
            assert!(
                aside.display().to_string().contains(".corrupt-"),
                "{}",
                aside.display()
            );
            assert_eq!(open_and_scan(&path, true), Ok(0), "a new, empty store");
        }
    }
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (e.g. "2m"); `None`, with the reason
    /// printed, where this process may not mount (not root, no tmpfs).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a {size} tmpfs here (mount needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: no mount command: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a file until it is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn after_a_full_disk_writing_resumes_and_nothing_acknowledged_is_lost() {
    use revalidate::{FetchError, Persistence, QueryClient, QueryKey, fetcher_fn};
    let Some(fs) = SmallFs::mount("8m") else {
        return;
    };
    let path = fs.path().join("cache.redb");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client: QueryClient<String> = QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
            Err::<String, _>(FetchError::failed("not used"))
        }))
        .build();
        let store = RedbStore::open(&path).unwrap();
        let (persist, _) = Persistence::new(store)
            .flush_every(std::time::Duration::from_secs(3600))
            .start(&client)
            .await
            .unwrap();
        let value = |i: usize| format!("{i:04}-{}", "x".repeat(1000));
        for i in 0..50 {
            client.set_data(&QueryKey::bare(format!("acked.{i}")), value(i));
        }
        assert_eq!(persist.flush().await.unwrap(), 50, "acknowledged: on disk");

        let filler = fs.fill();
        for i in 0..300 {
            client.set_data(&QueryKey::bare(format!("pending.{i}")), value(i));
        }
        let err = persist.flush().await.unwrap_err();
        eprintln!("flush on a full disk: {err}");
        assert!(persist.flush().await.is_err(), "still full");
        assert_eq!(persist.stats().pending, 300, "kept for the next flush");

        std::fs::remove_file(filler).unwrap();
        let written = persist
            .flush()
            .await
            .expect("writing resumes once space is freed");
        assert_eq!(written, 300);
        persist.shutdown().await.unwrap();
    });
    drop(rt);

    // A restart restores everything that was acknowledged, and what was
    // written after the disk recovered.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(RedbStore::open(&path).unwrap().scan()).unwrap();
    let keys: Vec<String> = rows
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    assert_eq!(keys.iter().filter(|k| k.starts_with("acked.")).count(), 50);
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("pending.")).count(),
        300
    );
}
