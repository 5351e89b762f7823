//! Update: `cpu.cores` and `memory.limit` changed live through the engine's update
//! call; labels and storage size, which Docker cannot change, refused unless they
//! repeat the current values.

use bollard::models::ContainerUpdateBody;
use unicompute_plugin_api::{ErrorCode, Instance, PluginError, UpdateRequest};

use super::Result;
use crate::backend::Shared;
use crate::spec;

impl Shared {
    pub(crate) async fn update(&self, id: &str, req: UpdateRequest) -> Result<Instance> {
        self.check_sizes(req.resources.memory_limit(), req.resources.total_space())
            .await?;
        let (container, c) = self.resolve(id).await?;
        let current = self
            .to_instance(&c)
            .ok_or_else(|| PluginError::not_found(id))?;
        if let Some(labels) = &req.labels {
            if *labels != current.metadata.labels {
                return Err(PluginError::new(
                    ErrorCode::OperationNotSupported,
                    "docker cannot change the labels of an existing container",
                )
                .with_detail("operation", "update labels"));
            }
        }
        if let Some(s) = req.resources.total_space() {
            if Some(s) != current.resources.total_space() {
                return Err(PluginError::new(
                    ErrorCode::OperationNotSupported,
                    "docker cannot resize the storage of an existing container",
                )
                .with_detail("operation", "update storage"));
            }
        }
        let cores = req.resources.cores();
        let memory = req.resources.memory_limit();
        if cores.is_none() && memory.is_none() {
            return Ok(current);
        }
        let host = self.host_resources().await?;
        self.check_resources(&host, cores, memory)?;
        let (nano_cpus, memory) = spec::engine_limits(cores, memory);
        let body = ContainerUpdateBody {
            nano_cpus,
            memory,
            memory_swap: memory,
            ..Default::default()
        };
        let cid = container.clone();
        self.expect(id, &["update"]);
        self.engine
            .quick(
                "update",
                |d| async move { d.update_container(&cid, body).await },
            )
            .await
            .inspect_err(|_| self.unexpect(id))?;
        self.touch(id);
        self.stats.forget(id);
        self.instance(id, &container).await
    }
}
