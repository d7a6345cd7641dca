//! The Kubernetes client: from a kubeconfig file when one is given, else
//! in-cluster configuration, then `$KUBECONFIG` / `~/.kube/config`.

use std::path::Path;

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Connect with `kubeconfig`, or the inferred configuration.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    crate::install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("no in-cluster config and no usable kubeconfig: {e}; pass --kubeconfig"))?,
    };
    Ok(Client::try_from(config)?)
}
