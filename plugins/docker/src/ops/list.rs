//! List and get: the instances of this backend, read from their containers' labels,
//! in creation order; a list also forgets what is kept of instances removed while the
//! server was away.

use std::collections::HashSet;

use futures_util::StreamExt;
use unicompute_plugin_api::sync::lock;
use unicompute_plugin_api::Instance;

use super::Result;
use crate::backend::Shared;

impl Shared {
    pub(crate) async fn list(&self) -> Result<Vec<Instance>> {
        if !lock(&self.abandoned).is_empty() {
            self.sweep_abandoned().await;
        }
        let found = self.containers_of(None).await?;
        let results: Vec<_> = futures_util::stream::iter(found)
            .map(|cid| async move { self.inspect_instance(&cid).await })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(Some(i)) if !lock(&self.abandoned).contains_key(&i.id) => out.push(i),
                Ok(_) => {}
                // Removed between the list and the inspect.
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        // Instances removed while the server was away leave nothing in the state file,
        // nor pins.
        let ids: HashSet<&str> = out.iter().map(|i| i.id.as_str()).collect();
        self.touched.retain(|id| ids.contains(id));
        self.sweep_pins(&ids).await;
        Ok(out)
    }

    /// One instance, inspected now.
    pub(crate) async fn get(&self, id: &str) -> Result<Instance> {
        let (_, c) = self.resolve(id).await?;
        self.instance_of(id, &c)
    }
}
