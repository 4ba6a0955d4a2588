//! `llava devices`: the GPU adapters wgpu finds, as `--device gpu:N` numbers them.

use anyhow::Result;
use llava_runtime::backend::gpu::adapters;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: &Args) -> Result<()> {
    let found = adapters();
    if found.is_empty() {
        println!("no GPU adapter (no Vulkan, Metal or DX12 driver found); models run on the CPU");
        return Ok(());
    }
    for (i, a) in found.iter().enumerate() {
        println!(
            "gpu:{i}  {}  ({}, {}{})",
            a.name,
            a.backend,
            a.device_type,
            if a.software {
                "; software: never chosen by --device gpu or auto, only by its number"
            } else {
                ""
            }
        );
        println!(
            "        driver: {}",
            if a.driver.is_empty() { "-" } else { &a.driver }
        );
        println!(
            "        limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations",
            a.max_storage_binding >> 20,
            a.max_buffer >> 20,
            a.max_workgroup_storage >> 10,
            a.max_invocations
        );
        println!(
            "        features: {}",
            if a.features.is_empty() {
                "none of shader-f16, subgroups, timestamp-query".to_owned()
            } else {
                a.features.join(", ")
            }
        );
    }
    Ok(())
}
