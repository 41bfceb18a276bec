/**
 * The sidebar's view of the cluster: jobs and GPUs, refreshed when the server
 * emits an AI Grid event (through JupyterLab's event manager) and, as a slow
 * fallback for utilisation that has no events, every 10 s.
 */
import { Event } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { getCluster, listJobs } from './api';
import { isAIGridEvent } from './events';
import { ICluster, IJob } from './types';

export { SCHEMA_PREFIX } from './events';
export const FALLBACK_POLL_MS = 10000;
const DEBOUNCE_MS = 150;

export class AIGridModel {
  jobs: IJob[] = [];
  cluster: ICluster | null = null;
  error: string | null = null;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /**
   * Call with every event of the server's event bus; ours (job_state,
   * job_placement, job_migration, job_checkpoint, ...) trigger a refresh.
   */
  onEvent(event: Event.Emission): void {
    if (isAIGridEvent(event.schema_id)) {
      this.refreshSoon();
    }
  }

  /** Show a job the server just answered with (a POST's answer) before the next refresh. */
  update(job: IJob): void {
    const index = this.jobs.findIndex(j => j.id === job.id);
    if (index >= 0) {
      this.jobs[index] = job;
      this._changed.emit();
    }
  }

  start(): void {
    void this.refresh();
    this._poll = window.setInterval(() => void this.refresh(), FALLBACK_POLL_MS);
  }

  dispose(): void {
    window.clearInterval(this._poll);
    window.clearTimeout(this._pending);
  }

  /** Coalesce a burst of events into one refresh. */
  refreshSoon(): void {
    window.clearTimeout(this._pending);
    this._pending = window.setTimeout(() => void this.refresh(), DEBOUNCE_MS);
  }

  async refresh(): Promise<void> {
    try {
      const [jobs, cluster] = await Promise.all([listJobs(), getCluster()]);
      this.jobs = jobs.sort((a, b) => Number(b.id) - Number(a.id));
      this.cluster = cluster;
      this.error = null;
    } catch (error) {
      this.error = String((error as Error).message ?? error);
    }
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _poll = 0;
  private _pending = 0;
}
