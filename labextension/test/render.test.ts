import { clusterMap } from '../src/cluster';
import { jobFacts, jobRow, placementTable, splitCommand, statusText } from '../src/render';
import { cluster, job } from './fixtures';

describe('jobRow', () => {
  it('shows state, name, owner, GPUs, QoS and age', () => {
    const row = jobRow(job());
    expect(row.dataset.jobId).toBe('7');
    expect(row.textContent).toContain('running');
    expect(row.textContent).toContain('mnist');
    expect(row.textContent).toContain('ada');
    expect(row.textContent).toContain('2 GPUs');
    expect(row.querySelector('.aigrid-job-age')?.textContent).toBe('1 m');
  });

  it('escapes names that contain markup', () => {
    const evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>';
    const row = jobRow(job({ name: evil }));
    expect(row.querySelector('img')).toBeNull();
    expect(row.querySelector('script')).toBeNull();
    expect(row.querySelector('.aigrid-job-name')?.textContent).toBe(evil);
  });

  it('shows the queue position of a queued job', () => {
    expect(jobRow(job({ state: 'queued', queue_position: 3 })).textContent).toContain('#3 in queue');
  });
});

describe('jobFacts', () => {
  it('lists the template and the image a job runs in', () => {
    const facts = new Map(
      jobFacts(
        job({
          description: { ...job().description, template: 'pytorch-ddp', image: { id: 'torch', ref: 'repo/torch:2' } },
          queue_position: 2
        })
      )
    );
    expect(facts.get('Template')).toBe('pytorch-ddp');
    expect(facts.get('Image')).toBe('repo/torch:2');
    expect(facts.get('Queue position')).toBe('2');
    expect(facts.get('GPUs')).toBe('2 (2 replicas)');
  });

  it("says a local job runs in the server's environment", () => {
    const facts = new Map(jobFacts(job({ description: { ...job().description, template: 'single', image: null } })));
    expect(facts.get('Image')).toBe("the server's environment");
  });
});

describe('placementTable', () => {
  it('lays out nodes x GPUs with the rank on each', () => {
    const table = placementTable([
      { rank: 0, node: 'node-0', local_rank: 0, gpus: [{ index: 0, uuid: 'a', model: 'm', simulated: true }] },
      { rank: 1, node: 'node-1', local_rank: 0, gpus: [{ index: 1, uuid: 'b', model: 'm', simulated: false }] }
    ]);
    const rows = [...table.querySelectorAll('tr')].map(r => r.textContent);
    expect(rows).toEqual(['node-0GPU 0 (sim): rank 0', 'node-1GPU 1: rank 1']);
  });

  it('says when a job is not placed', () => {
    expect(placementTable(null).textContent).toBe('Not placed yet.');
  });
});

describe('clusterMap', () => {
  it('colours GPUs by job, marks simulated ones and shows NVML bars', () => {
    const map = clusterMap(cluster);
    expect(map.querySelectorAll('.aigrid-node')).toHaveLength(2);
    expect(map.querySelectorAll('.aigrid-gpu-simulated')).toHaveLength(2);
    expect(map.querySelectorAll('.aigrid-gpu-busy')).toHaveLength(2);
    expect(map.textContent).toContain('SIMULATED');
    expect(map.textContent).toContain('2/4 GPUs free');
    const bars = map.querySelectorAll<HTMLElement>('.aigrid-bar-fill');
    expect([...bars].map(b => b.style.width)).toEqual(['40%', '25%']);
    // The server counts GPU memory in MiB; the map writes it as every size is written.
    expect(bars[1].parentElement?.title).toBe('memory 20 GiB / 78 GiB');
  });
});

describe('statusText', () => {
  it('counts running and queued jobs and busy GPUs', () => {
    const jobs = [job(), job({ id: '8', state: 'queued' }), job({ id: '9', state: 'succeeded' })];
    expect(statusText(jobs, cluster)).toBe('AI Grid: 1 running · 1 queued · 2/4 GPUs');
    expect(statusText([], null)).toBe('AI Grid: 0 running · 0 queued');
  });
});

describe('helpers', () => {
  it('splits command lines with quotes', () => {
    expect(splitCommand(`python -c "print('hi there')" --x 'a b'`)).toEqual([
      'python',
      '-c',
      "print('hi there')",
      '--x',
      'a b'
    ]);
  });
});
