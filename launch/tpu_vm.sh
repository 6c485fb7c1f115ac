#!/usr/bin/env bash
# Train on a Cloud TPU VM (one host or a multi-host pod slice) with gcloud:
#
#   launch/tpu_vm.sh create            # the TPU VM
#   launch/tpu_vm.sh setup             # this repo (git HEAD) + Python 3.11 venv on every worker
#   launch/tpu_vm.sh train [--config.a.b=value ...]   # data once on worker 0, then all workers
#   launch/tpu_vm.sh delete
#   launch/tpu_vm.sh all [--config...] # the four in order; deletes the VM even if a step fails
#
# Environment (defaults in brackets): TPU_NAME [asarm], ZONE [us-central2-b],
#   ACCELERATOR [v4-32: 4 hosts], RUNTIME [tpu-ubuntu2204-base], PROJECT [gcloud's default],
#   CONFIG [configs/xlnet_base.py], WORKDIR [$HOME/runs/<config name> on the workers],
#   FSDP [1], TENSOR [1] (mesh: data = the remaining chips),
#   NFS_SHARE [none]: e.g. 10.0.0.2:/share, mounted at /mnt/asarm on every worker by setup.
# With more than one host WORKDIR must be on a filesystem every worker mounts (Orbax writes each
# host's shards of a checkpoint into it): set NFS_SHARE and WORKDIR=/mnt/asarm/<run>. gs://
# paths are not supported (the trainer writes metrics and TensorBoard files with plain file I/O).
# Run it from a terminal that stays open (tmux): train runs in the foreground of the ssh session.
set -euo pipefail
cd "$(dirname "$0")/.."

TPU_NAME=${TPU_NAME:-asarm}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/xlnet_base.py}
WORKDIR=${WORKDIR:-'$HOME'/runs/$(basename "$CONFIG" .py)}
FSDP=${FSDP:-1}
TENSOR=${TENSOR:-1}
GCLOUD=(gcloud compute tpus tpu-vm)
FLAGS=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
PYTHON='$HOME/asarm_venv/bin/python'

on_workers() {  # on_workers all|0 COMMAND
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${FLAGS[@]}" --worker="$1" --command="$2"
}

create() {
  "${GCLOUD[@]}" create "$TPU_NAME" "${FLAGS[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
}

setup() {
  local archive=/tmp/asarm_jax_$$.tar.gz
  git archive --format=tar.gz -o "$archive" HEAD  # the committed code
  "${GCLOUD[@]}" scp "$archive" "$TPU_NAME":asarm_jax.tar.gz "${FLAGS[@]}" --worker=all
  rm -f "$archive"
  # The runtime images ship Python 3.10; jax >= 0.10 needs 3.11+: a uv-managed venv.
  on_workers all "set -e
    rm -rf ~/asarm_jax && mkdir ~/asarm_jax && tar xzf ~/asarm_jax.tar.gz -C ~/asarm_jax
    python3 -m pip install --user -q uv
    ~/.local/bin/uv venv -q --python 3.11 ~/asarm_venv
    ~/.local/bin/uv pip install -q --python $PYTHON 'jax[tpu]' -e ~/asarm_jax
    $PYTHON -c 'import jax; print(jax.process_index(), jax.local_devices())'"
  if [[ -n "${NFS_SHARE:-}" ]]; then
    on_workers all "set -e; sudo apt-get install -y -q nfs-common; sudo mkdir -p /mnt/asarm
      mountpoint -q /mnt/asarm || sudo mount -t nfs $NFS_SHARE /mnt/asarm
      sudo chmod a+rwx /mnt/asarm"
  fi
}

train() {
  local overrides
  overrides=$(printf '%q ' "$@")
  # Data and tokenizer once (every worker would otherwise build them at the same time).
  on_workers 0 "cd ~/asarm_jax && $PYTHON launch/prepare_data.py --config=$CONFIG \
    --workdir=$WORKDIR $overrides"
  # One process per host; jax.distributed.initialize() finds the other workers itself.
  on_workers all "cd ~/asarm_jax && ASARM_MULTIHOST=1 $PYTHON -m asarm_jax.main \
    --config=$CONFIG --workdir=$WORKDIR --config.mesh.data=-1 --config.mesh.fsdp=$FSDP \
    --config.mesh.tensor=$TENSOR $overrides"
}

delete() {
  "${GCLOUD[@]}" delete "$TPU_NAME" "${FLAGS[@]}" --quiet
}

command=${1:?usage: launch/tpu_vm.sh create|setup|train|delete|all [--config.a.b=value ...]}
shift
case "$command" in
  create|setup|delete) "$command" ;;
  train) train "$@" ;;
  all)
    create
    trap delete EXIT  # a TPU VM bills until it is deleted
    setup
    train "$@"
    ;;
  *) echo "unknown command $command" >&2; exit 2 ;;
esac
