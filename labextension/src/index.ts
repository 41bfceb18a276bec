import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';

/**
 * Initialization data for the jupyter-aigrid extension.
 *
 * The AI Grid sidebar is added in a later change; for now the plugin only
 * announces itself so that the build and installation can be verified.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-aigrid:plugin',
  description: 'JupyterLab frontend for jupyter-aigrid.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    console.log('AI Grid extension is activated');
  }
};

export default plugin;
