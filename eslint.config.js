import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'guest/**', 'coverage/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', Buffer: 'readonly', console: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', URL: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly', TextDecoder: 'readonly', TextEncoder: 'readonly' } },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Commands never call process.exit: the base command maps errors to exit codes.
      'no-restricted-properties': ['error', { object: 'process', property: 'exit', message: 'Throw a BaleError; BaseCommand maps it to an exit code.' }],
    },
  },
  {
    // Standalone scripts, fixtures, benchmarks and tests own their process; commands do not.
    files: ['test/**', 'bench/**', 'fixtures/**', 'scripts/**'],
    rules: { 'no-restricted-properties': 'off' },
  },
)
