/** The cluster map: nodes x GPUs, coloured by the job on each GPU, simulated GPUs marked. */
import { el } from './dom';
import { formatBytes } from './format';
import { ICluster, IClusterGpu } from './types';

/** Colours for the jobs on the cluster map, chosen by job id. */
const JOB_COLOURS = [
  '#42a5f5',
  '#66bb6a',
  '#ffa726',
  '#ab47bc',
  '#26c6da',
  '#ef5350',
  '#8d6e63',
  '#d4e157'
];

const MIB = 1024 ** 2;

export function jobColour(jobId: string): string {
  let hash = 0;
  for (const ch of jobId) {
    hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  }
  return JOB_COLOURS[hash % JOB_COLOURS.length];
}

function bar(label: string, fraction: number): HTMLElement {
  const fill = el('span', { class: 'aigrid-bar-fill' });
  fill.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
  return el('span', { class: 'aigrid-bar', title: label }, fill);
}

function gpuCell(gpu: IClusterGpu): HTMLElement {
  const title = `${gpu.model} ${gpu.uuid}${gpu.simulated ? ' (simulated: a CPU slot)' : ''}`;
  // The server counts GPU memory in MiB (NVML's bytes / 2**20).
  const memory =
    gpu.memory_used_mb !== undefined && gpu.memory_mb
      ? bar(
          `memory ${formatBytes(gpu.memory_used_mb * MIB)} / ${formatBytes(gpu.memory_mb * MIB)}`,
          gpu.memory_used_mb / gpu.memory_mb
        )
      : null;
  const cell = el(
    'div',
    {
      class: `aigrid-gpu${gpu.simulated ? ' aigrid-gpu-simulated' : ''}${gpu.job_id ? ' aigrid-gpu-busy' : ''}`,
      title
    },
    el('span', { class: 'aigrid-gpu-index' }, `GPU ${gpu.index}`),
    gpu.job_id ? el('span', { class: 'aigrid-gpu-job' }, `#${gpu.job_id} r${gpu.rank}`) : null,
    gpu.utilization_pct !== undefined
      ? bar(`utilisation ${gpu.utilization_pct}%`, gpu.utilization_pct / 100)
      : null,
    memory
  );
  if (gpu.job_id) {
    cell.style.background = jobColour(gpu.job_id);
  }
  return cell;
}

/** Nodes x GPUs, coloured by the job on each GPU; simulated GPUs marked. */
export function clusterMap(cluster: ICluster): HTMLElement {
  return el(
    'div',
    { class: 'aigrid-cluster' },
    el(
      'p',
      { class: 'aigrid-cluster-summary' },
      `${cluster.gpus_free}/${cluster.gpus_total} GPUs free · ${cluster.executor} executor`
    ),
    cluster.simulated
      ? el(
          'p',
          { class: 'aigrid-simulated-note' },
          'SIMULATED GPUs (dashed): CPU slots, no real GPU on this machine.'
        )
      : null,
    ...cluster.nodes.map(node =>
      el(
        'div',
        { class: 'aigrid-node', 'data-node': node.name },
        el('div', { class: 'aigrid-node-name' }, node.name),
        el('div', { class: 'aigrid-node-gpus' }, ...node.gpus.map(gpuCell))
      )
    )
  );
}
