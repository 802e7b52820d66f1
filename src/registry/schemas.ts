import { z } from 'zod'
import { SHA256_DIGEST } from './reference.js'

/**
 * The zod schemas of the documents manifest.ts parses: descriptors, image indexes, manifests and
 * image configs. They are the reference definitions (the types come from them), and what
 * catalog/ and pipeline/source/ parse with; the pull path itself checks documents with
 * validate.ts's hand-written equivalents, tested against these, so that it does not load zod.
 */
export const DescriptorSchema = z.object({
  mediaType: z.string().min(1),
  digest: z.string().regex(SHA256_DIGEST, 'not a sha256 digest'),
  size: z.number().int().nonnegative(),
  platform: z
    .object({
      os: z.string(),
      architecture: z.string(),
      variant: z.string().optional(),
      'os.version': z.string().optional(),
    })
    .optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  urls: z.array(z.string()).optional(),
})
export type Descriptor = z.infer<typeof DescriptorSchema>

export const IndexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(DescriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
})
export type ImageIndex = z.infer<typeof IndexSchema>

export const ManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
})
export type ImageManifest = z.infer<typeof ManifestSchema>

const nullableStrings = z.array(z.string()).nullish()

/** The parts of an image config bale uses (OCI image-spec config.md; Docker's is a superset). */
export const ConfigFileSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  variant: z.string().optional(),
  created: z.string().optional(),
  config: z
    .object({
      Entrypoint: nullableStrings,
      Cmd: nullableStrings,
      Env: nullableStrings,
      User: z.string().nullish(),
      WorkingDir: z.string().nullish(),
      ExposedPorts: z.record(z.string(), z.unknown()).nullish(),
      Labels: z.record(z.string(), z.string()).nullish(),
      StopSignal: z.string().nullish(),
    })
    .nullish(),
  rootfs: z.object({
    type: z.literal('layers'),
    diff_ids: z.array(z.string().regex(SHA256_DIGEST, 'not a sha256 digest')),
  }),
})
export type ConfigFile = z.infer<typeof ConfigFileSchema>

