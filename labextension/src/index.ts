/**
 * The jupyter-aigrid JupyterLab extension: the "AI Grid" sidebar and a status
 * bar item, both kept live by the server's AI Grid events.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { AIGridModel } from './model';
import { AIGridPanel } from './panel';
import { statusText } from './render';

const gridIcon = new LabIcon({
  name: 'jupyter-aigrid:grid',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="3" width="8" height="8" rx="1"/><rect x="13" y="3" width="8" height="8" rx="1"/>' +
    '<rect x="3" y="13" width="8" height="8" rx="1"/><rect x="13" y="13" width="8" height="8" rx="1"/>' +
    '</g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-aigrid:plugin',
  description: 'The AI Grid sidebar: every job and every GPU of the cluster, live.',
  autoStart: true,
  optional: [ILabShell, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    statusBar: IStatusBar | null
  ) => {
    const model = new AIGridModel();
    app.serviceManager.events.stream.connect((_, event) => model.onEvent(event));
    model.start();

    const panel = new AIGridPanel(model);
    panel.title.icon = gridIcon;
    app.shell.add(panel, 'left', { rank: 300 });

    if (statusBar) {
      const item = new Widget();
      item.addClass('aigrid-status');
      item.node.textContent = statusText([], null);
      item.node.addEventListener('click', () => labShell?.activateById(panel.id));
      model.changed.connect(() => {
        item.node.textContent = statusText(model.jobs, model.cluster);
      });
      statusBar.registerStatusItem('jupyter-aigrid:status', { item, align: 'left', rank: 50 });
    }
  }
};

export default plugin;
