// The site's pages of the repository files and folders the book links to (see packages/book/src/repo-files.ts).
import { codePages } from '../../../packages/book/src/repo-files.ts';

export default { paths: codePages };
