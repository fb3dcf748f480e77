//! A database of a format this build does not know is refused at start (or
//! at snapshot install) with a message that names the version and the
//! release that wrote it, and is left as it was.

use std::path::Path;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use redb::{ReadableDatabase, TableDefinition};
use tempfile::TempDir;
use wasmraft::command::codec;
use wasmraft::storage::{SnapshotFileReader, SnapshotFileWriter, StateMachineStore};

use super::fixture;

const STATE_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FUTURE_RELEASE: &str = "wasmraft 9.0.0";

/// A dev node's data directory from the newest fixture.
fn data_directory() -> (TempDir, std::path::PathBuf) {
    let release = fixture::releases().pop().expect("a fixture");
    let expected: fixture::Expected =
        serde_json::from_str(&std::fs::read_to_string(release.join("expected.json")).unwrap())
            .unwrap();
    let unpacked = TempDir::new().unwrap();
    fixture::unpack(&release.join(&expected.dev.archive), unpacked.path());
    let directory = fixture::node_directory(unpacked.path(), 1);
    (unpacked, directory)
}

fn stamp_state(path: &Path, format: u32) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(STATE_META).unwrap();
        meta.insert(b"format".as_slice(), codec::encode(&format).as_slice())
            .unwrap();
        meta.insert(
            b"written_by".as_slice(),
            codec::encode(FUTURE_RELEASE).as_slice(),
        )
        .unwrap();
    }
    txn.commit().unwrap();
}

fn state_format(path: &Path) -> u32 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(STATE_META).unwrap();
    codec::decode(meta.get(b"format".as_slice()).unwrap().unwrap().value()).unwrap()
}

async fn start_error(directory: &Path) -> String {
    let config = wasmraft::node::config::NodeConfig {
        node_id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        data_dir: directory.to_path_buf(),
        bootstrap: false,
        cluster_secret_file: None,
        insecure: true,
        tls: Default::default(),
        raft: fixture::raft_settings(),
        limits: Default::default(),
        membership: Default::default(),
        cluster: Default::default(),
        telemetry: Default::default(),
    };
    match wasmraft::node::Node::start(config, Default::default()).await {
        Ok(node) => {
            node.shutdown().await.unwrap();
            panic!("a node started on a database it cannot read")
        }
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_a_newer_format_is_refused_and_left_untouched() {
    let (_unpacked, directory) = data_directory();
    let state = directory.join("state/state.redb");
    stamp_state(&state, 99);
    let message = start_error(&directory).await;
    assert_eq!(
        message,
        format!(
            "cannot open the state: the state (state/state.redb) has format 99 (written by \
             {FUTURE_RELEASE}); this build ({}) reads format {}. A newer release wrote it: run \
             that release (or a later one) on this data directory.",
            wasmraft::storage::format::RELEASE,
            wasmraft::storage::format::STATE_FORMAT
        )
    );
    assert_eq!(state_format(&state), 99, "a refused state was rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_a_newer_format_is_refused() {
    let (_unpacked, directory) = data_directory();
    {
        let db = redb::Database::open(directory.join("log.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(LOG_META).unwrap();
            meta.insert("format", codec::encode(&5u32).as_slice())
                .unwrap();
            meta.insert("written_by", codec::encode(FUTURE_RELEASE).as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let message = start_error(&directory).await;
    assert!(
        message.starts_with(&format!(
            "cannot open the Raft log: the Raft log (log.redb) has format 5 (written by \
             {FUTURE_RELEASE})"
        )),
        "{message}"
    );
}

/// A snapshot whose state format this build does not know is refused
/// before anything is swapped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_newer_format_is_refused() {
    let (_unpacked, directory) = data_directory();
    let runtime = wasmraft::wasm::Runtime::new(Default::default()).unwrap();
    let mut source = StateMachineStore::open(directory.join("state"), runtime.clone()).unwrap();
    let snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // The same snapshot, its state format record rewritten.
    let original = snapshot.snapshot.into_std().await;
    let mut reader = SnapshotFileReader::new(original).unwrap();
    let mut rewritten = tempfile::tempfile().unwrap();
    let mut writer = SnapshotFileWriter::new(rewritten.try_clone().unwrap()).unwrap();
    let mut stamped = false;
    while let Some(record) = reader.next_record().unwrap() {
        if record.table == 0 && record.key == b"format" {
            writer
                .record(0, &record.key, &codec::encode(&42u32))
                .unwrap();
            stamped = true;
        } else {
            writer
                .record(record.table, &record.key, &record.value)
                .unwrap();
        }
    }
    writer.finish().unwrap();
    assert!(stamped, "the snapshot carries the state format");
    std::io::Seek::rewind(&mut rewritten).unwrap();

    let target = TempDir::new().unwrap();
    let mut store = StateMachineStore::open(target.path(), runtime).unwrap();
    let before = store.reader().digest().unwrap();
    let error = store
        .install_snapshot(
            &snapshot.meta,
            Box::new(tokio::fs::File::from_std(rewritten)),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("the snapshot has format 42"),
        "{error}"
    );
    assert_eq!(store.reader().digest().unwrap(), before);
    assert!(store.get_current_snapshot().await.unwrap().is_none());
}
