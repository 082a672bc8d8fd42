// The default theme, plus the Progress page's table.
import DefaultTheme from 'vitepress/theme';
import type { Theme } from 'vitepress';
import ProgressTable from './ProgressTable.vue';

export default {
  extends: DefaultTheme,
  enhanceApp({ app }) {
    app.component('ProgressTable', ProgressTable);
  },
} satisfies Theme;
