import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', '**/coverage/**', 'packages/web/generated/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  // The fleet console runs in the browser.
  { files: ['packages/web/src/**'], languageOptions: { globals: globals.browser } },
  // A package's tests never reach into another package's test folder: what tests of several packages share lives
  // in the root test/support/.
  {
    files: ['packages/*/test/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: [
                '**/core/test/**',
                '**/agent/test/**',
                '**/server/test/**',
                '**/cli/test/**',
                '**/web/test/**',
              ],
              message: "another package's test folder: move what is shared to the root test/support/",
            },
          ],
        },
      ],
    },
  },
);
