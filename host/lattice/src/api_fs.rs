//! The API's `FsService`: filesystem stores mounted as folders (FUSE), served by this node.

use std::path::PathBuf;

use lattice_fs::{MountError, MountInfo};
use lattice_proto::v1::{self, fs_service_server::FsService};
use tonic::{Request, Response, Status};

use crate::api::{Api, coded, status_of};

fn mount_status(e: MountError) -> Status {
    use tonic::Code;
    let text = e.to_string();
    match e {
        MountError::Node(e) => status_of(e),
        MountError::NotFs { .. } => coded(Code::InvalidArgument, "invalid_argument", text),
        MountError::Mount { .. } => coded(Code::FailedPrecondition, "mount_failed", text),
        MountError::NotMounted(_) => coded(Code::NotFound, "not_found", text),
        MountError::AlreadyMounted(_) => coded(Code::AlreadyExists, "already_mounted", text),
        MountError::Record { .. } => coded(Code::Internal, "internal", text),
    }
}

fn info(m: &MountInfo) -> v1::MountInfo {
    v1::MountInfo {
        store: m.store.to_string(),
        dir: m.dir.display().to_string(),
    }
}

/// Runs blocking mount work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MountError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Status::internal("the mount task failed"))?
        .map_err(mount_status)
}

#[tonic::async_trait]
impl FsService for Api {
    async fn mount(
        &self,
        req: Request<v1::MountRequest>,
    ) -> Result<Response<v1::MountInfo>, Status> {
        let req = req.into_inner();
        let store = self.find(&req.store)?;
        let mounts = self.mounts().clone();
        let dir = PathBuf::from(req.dir);
        let mounted = blocking(move || mounts.mount(store, &dir)).await?;
        Ok(Response::new(info(&mounted)))
    }

    async fn unmount(
        &self,
        req: Request<v1::UnmountRequest>,
    ) -> Result<Response<v1::MountInfo>, Status> {
        let dir = PathBuf::from(req.into_inner().dir);
        let mounts = self.mounts().clone();
        let unmounted = blocking(move || mounts.unmount(&dir)).await?;
        Ok(Response::new(info(&unmounted)))
    }

    async fn mounts(&self, _req: Request<v1::Empty>) -> Result<Response<v1::MountList>, Status> {
        Ok(Response::new(v1::MountList {
            items: self.mounts().list().iter().map(info).collect(),
        }))
    }
}
