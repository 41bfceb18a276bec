/** The jobs and the cluster the tests render. */
import { ICluster, IJob } from '../src/types';

export function job(overrides: Partial<IJob> = {}): IJob {
  return {
    id: '7',
    name: 'mnist',
    owner: 'ada',
    kind: 'training',
    state: 'running',
    reason: null,
    priority: 'normal',
    qos: 'normal',
    preemptible: false,
    gpus: 2,
    replicas: 2,
    queue_position: null,
    placement: null,
    stopping: false,
    restarts: 0,
    attempt: 0,
    submitted_at: new Date(Date.now() - 90_000).toISOString(),
    started_at: null,
    finished_at: null,
    elapsed_s: null,
    migration: null,
    ...overrides
  };
}

export const cluster: ICluster = {
  executor: 'local',
  simulated: true,
  gpus_total: 4,
  gpus_free: 2,
  nodes: [
    {
      name: 'node-0',
      cpus: 4,
      memory_mb: 1024,
      gpus: [
        { index: 0, uuid: 'SIM-0', model: 'simulated', memory_mb: 0, simulated: true, job_id: '7', rank: 0 },
        { index: 1, uuid: 'SIM-1', model: 'simulated', memory_mb: 0, simulated: true, job_id: '7', rank: 1 }
      ]
    },
    {
      name: 'node-1',
      cpus: 4,
      memory_mb: 1024,
      gpus: [
        { index: 0, uuid: 'GPU-a', model: 'H100', memory_mb: 80000, simulated: false, job_id: null, rank: null, utilization_pct: 40, memory_used_mb: 20000 },
        { index: 1, uuid: 'GPU-b', model: 'H100', memory_mb: 80000, simulated: false, job_id: null, rank: null }
      ]
    }
  ]
};
