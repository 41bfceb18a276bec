/** What the REST API returns, as far as the sidebar reads it. */

export interface IPlacementGpu {
  index: number;
  uuid: string | null;
  model: string | null;
  simulated: boolean | null;
}

export interface IPlacementSlot {
  rank: number;
  node: string;
  local_rank: number;
  gpus: IPlacementGpu[];
}

export interface IJob {
  id: string;
  name: string;
  owner: string;
  kind: string;
  state: string;
  reason: string | null;
  priority: string;
  qos: string;
  preemptible: boolean;
  gpus: number;
  replicas: number;
  queue_position: number | null;
  placement: IPlacementSlot[] | null;
  stopping: boolean;
  restarts: number;
  attempt: number;
  submitted_at: string;
  started_at: string | null;
  finished_at: string | null;
  elapsed_s: number | null;
  migration: unknown;
  /** The rendered job description: its template and the image it runs in (if any). */
  description?: {
    template: string;
    image: { id: string | null; ref: string } | null;
  };
}

export interface IClusterGpu {
  index: number;
  uuid: string;
  model: string;
  memory_mb: number;
  simulated: boolean;
  job_id: string | null;
  rank: number | null;
  utilization_pct?: number;
  memory_used_mb?: number;
}

export interface IClusterNode {
  name: string;
  cpus: number;
  memory_mb: number;
  gpus: IClusterGpu[];
}

export interface ICluster {
  executor: string;
  simulated: boolean;
  gpus_total: number;
  gpus_free: number;
  nodes: IClusterNode[];
}

export interface ILogLine {
  rank: number;
  stream: 'stdout' | 'stderr';
  line: string;
}

export const JOB_STATES = [
  'queued',
  'starting',
  'running',
  'succeeded',
  'failed',
  'cancelled',
  'preempted'
];
