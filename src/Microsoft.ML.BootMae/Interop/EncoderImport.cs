using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

// The decisions of BootMaeEncoder.FromPyTorch that the tensors alone do not settle: the architecture (inferred from
// shapes when not given), the input normalisation (from the key naming when not given), and the position table's
// grid (resampled when the image size differs). Each decision is reported through the caller's log.
internal static class EncoderImport
{
    // Heads of the ViT presets by width (timm, MAE, BEiT, BootMAE); the file's shapes do not record heads.
    private static readonly Dictionary<int, (int Heads, string Preset)> PresetHeads = new()
    {
        [192] = (3, "ViT-Ti"),
        [384] = (6, "ViT-S"),
        [768] = (12, "ViT-B"),
        [1024] = (16, "ViT-L"),
        [1280] = (16, "ViT-H"),
    };

    public static BootMaeNormalization ResolveNormalization(BootMaePyTorchImportOptions options, PyTorchWeights.KeyNaming naming, PyTorchWeights.TrainingArgs args, string path, Action<string>? log)
    {
        var recorded = FromArgs(args, out var why);
        var fromNames = naming.Kind == PyTorchWeights.KeyNamingKind.BootMae ? BootMaeNormalization.BootMae : naming.HasMaeDecoder ? BootMaeNormalization.ImageNet : null;
        var expected = recorded ?? fromNames;
        var explicitChoice = options.Normalization ?? (options.Architecture is { } given && !given.Normalization.IsBootMae ? given.Normalization : null);
        if (explicitChoice is not null)
        {
            string note = expected is not null && expected != explicitChoice
                ? $" Note: the file suggests {expected} instead ({(recorded is not null ? why : $"it has {naming.Describe()}")})."
                : string.Empty;
            log?.Invoke($"FromPyTorch: input normalisation {explicitChoice} ({(options.Normalization is not null ? "given" : "the given architecture's")}).{note}");
            return explicitChoice;
        }

        if (recorded is not null)
        {
            log?.Invoke($"FromPyTorch: input normalisation {recorded}: {why}.");
            return recorded;
        }

        if (naming.Kind == PyTorchWeights.KeyNamingKind.BootMae)
        {
            log?.Invoke($"FromPyTorch: input normalisation {BootMaeNormalization.BootMae}: the file has {naming.Describe()}, whose pretraining uses mean = std = 0.5.");
            return BootMaeNormalization.BootMae;
        }

        if (naming.HasMaeDecoder)
        {
            log?.Invoke($"FromPyTorch: input normalisation {BootMaeNormalization.ImageNet} (ImageNet): the file has {naming.Describe()}, and MAE is pretrained on ImageNet-normalised pixels.");
            return BootMaeNormalization.ImageNet;
        }

        throw new InvalidOperationException(
            $"'{path}' has {naming.Describe()}, which do not tell the input normalisation its weights expect: MAE's encoder release, DeiT and most " +
            "timm ImageNet-1k models use the ImageNet mean/std, Google's ViT and timm's augreg models use mean = std = 0.5, and a wrong choice silently " +
            "degrades every feature. Say which: FromPyTorch(path, new BootMaePyTorchImportOptions { Normalization = BootMaeNormalization.ImageNet }) " +
            "(or BootMaeNormalization.BootMae for 0.5 / 0.5; the model card or the preprocessor config of the weights gives it), with Architecture set as well if you give one.");
    }

    // The normalisation the training run recorded in its 'args', with the reason, or null.
    private static BootMaeNormalization? FromArgs(PyTorchWeights.TrainingArgs args, out string why)
    {
        if (args.Recorded is { } recorded)
        {
            why = "the file's metadata records it (written by BootMaeEncoder.ExportSafetensors)";
            return recorded;
        }

        if (args.ImageNetDefaultMeanAndStd is { } imageNet)
        {
            why = $"the checkpoint's args.imagenet_default_mean_and_std is {imageNet}, so the official data pipeline normalised with " +
                  (imageNet ? "the ImageNet mean/std" : "mean = std = 0.5 (timm's IMAGENET_INCEPTION_MEAN/STD)");
            return imageNet ? BootMaeNormalization.ImageNet : BootMaeNormalization.BootMae;
        }

        if (args.ModelName is { } name && name.StartsWith("mae_", StringComparison.Ordinal))
        {
            why = $"the checkpoint's args.model is '{name}', an MAE model, and MAE normalises with the ImageNet mean/std";
            return BootMaeNormalization.ImageNet;
        }

        why = string.Empty;
        return null;
    }

    // The architecture from the encoder tensors (official names): patch size, channels and width from the patch
    // embedding, depth from the block indices, MLP ratio from fc1, the image size from the position table (or the
    // caller's ImageSize), heads from the caller or the presets' rule.
    public static BootMaeArchitecture Infer(IReadOnlyDictionary<string, Tensor> weights, BootMaePyTorchImportOptions options, BootMaeNormalization normalization, string path, Action<string>? log)
    {
        var patch = Require(weights, "patch_embed.proj.weight", path, 4);
        int d = (int)patch.shape[0], channels = (int)patch.shape[1], p = (int)patch.shape[2];
        if (patch.shape[3] != p)
        {
            throw new InvalidDataException($"'{path}': 'patch_embed.proj.weight' has non-square patches [{string.Join(", ", patch.shape)}]; only square patches are supported.");
        }

        var blockIndices = weights.Keys
            .Where(k => k.StartsWith("blocks.", StringComparison.Ordinal))
            .Select(k => int.Parse(k.Split('.')[1], CultureInfo.InvariantCulture))
            .Distinct().OrderBy(i => i).ToList();
        if (blockIndices.Count == 0 || blockIndices[^1] != blockIndices.Count - 1)
        {
            throw new InvalidDataException($"'{path}': the encoder blocks are not numbered 0..N−1 (found {string.Join(", ", blockIndices.Take(8))}); is this a ViT encoder?");
        }

        int depth = blockIndices.Count;
        var fc1 = Require(weights, "blocks.0.mlp.fc1.weight", path, 2);
        int hidden = (int)fc1.shape[0];
        double mlpRatio = (double)hidden / d;
        if ((int)Math.Floor(d * mlpRatio) != hidden)
        {
            // d · (hidden / d) can round below hidden in binary; nudge so the module rebuilds exactly `hidden` units.
            mlpRatio = (hidden + 0.5) / d;
        }

        var qkv = Require(weights, "blocks.0.attn.qkv.weight", path, 2);
        if (qkv.shape[0] != 3 * d)
        {
            throw new InvalidDataException($"'{path}': the attention's inner width {qkv.shape[0] / 3} differs from the embedding width {d}; this encoder supports inner width = width only.");
        }

        var pos = Require(weights, "pos_embed", path, 3);
        int fileGrid = GridOf(pos, path);
        int imageSize = options.ImageSize ?? (fileGrid * p);
        string sizeSource = options.ImageSize is null ? $"the {fileGrid}×{fileGrid} position table × patch {p}" : "given";

        string headsSource;
        int heads;
        if (options.Heads is { } h)
        {
            heads = h;
            headsSource = "given";
        }
        else if (PresetHeads.TryGetValue(d, out var preset))
        {
            heads = preset.Heads;
            headsSource = $"not stored in the file: the {preset.Preset} preset's count for width {d}; set Heads if the weights were trained with another";
        }
        else if (d % 64 == 0)
        {
            heads = d / 64;
            headsSource = $"not stored in the file: width {d} / 64; set Heads if the weights were trained with another";
        }
        else
        {
            throw new InvalidDataException(
                $"'{path}': the number of attention heads is not stored in the file and width {d} is neither a ViT preset's (192, 384, 768, 1024, 1280) nor a multiple of 64; set Heads in BootMaePyTorchImportOptions (or give the whole Architecture).");
        }

        var architecture = new BootMaeArchitecture
        {
            ImageSize = imageSize, PatchSize = p, Channels = channels, EmbedDim = d, Depth = depth, Heads = heads, MlpRatio = mlpRatio,
            RegressorHeads = heads, PredictorHeads = heads, Normalization = normalization,
        };
        try
        {
            architecture.Validate();
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"'{path}': the architecture inferred from its shapes is not usable ({ex.Message}). Give BootMaePyTorchImportOptions.Architecture.", ex);
        }

        log?.Invoke(
            $"FromPyTorch: inferred the architecture of '{path}' from its tensor shapes: ImageSize {imageSize} ({sizeSource}), PatchSize {p}, Channels {channels}, " +
            $"EmbedDim {d}, Depth {depth}, MlpRatio {mlpRatio.ToString("R", CultureInfo.InvariantCulture)} ({hidden} hidden units), Heads {heads} ({headsSource}).");
        return architecture;
    }

    // The file's table on the architecture's grid: bicubic resampling of the patch rows, the cls row kept apart, as
    // timm's resample_abs_pos_embed (antialiased when shrinking). New tensors are made in the caller's dispose scope.
    public static void FitPositionTable(Dictionary<string, Tensor> weights, BootMaeArchitecture architecture, string path, Action<string>? log)
    {
        if (!weights.TryGetValue("pos_embed", out var pos) || pos.dim() != 3 || pos.shape[1] == 1 + architecture.NumPatches || pos.shape[2] != architecture.EmbedDim)
        {
            // Absent, of the right length already, or of the wrong width: LoadWeights names the problem.
            return;
        }

        int fileGrid = GridOf(pos, path);
        weights["pos_embed"] = Resample(pos, architecture.GridSize);
        log?.Invoke(
            $"FromPyTorch: resampled the position table of '{path}' from a {fileGrid}×{fileGrid} to a {architecture.GridSize}×{architecture.GridSize} grid " +
            $"(bicubic, as timm does; cls row kept) for ImageSize {architecture.ImageSize}.");
    }

    // [1, 1 + g², D] → [1, 1 + newGrid², D].
    internal static Tensor Resample(Tensor pos, int newGrid)
    {
        int grid = (int)Math.Round(Math.Sqrt(pos.shape[1] - 1));
        long d = pos.shape[2];
        var cls = pos[.., ..1];
        var table = pos[.., 1..].to(ScalarType.Float32).reshape(1, grid, grid, d).permute(0, 3, 1, 2);
        var resized = nn.functional.interpolate(table, new long[] { newGrid, newGrid }, mode: InterpolationMode.Bicubic, align_corners: false, antialias: newGrid < grid);
        var patches = resized.permute(0, 2, 3, 1).reshape(1, (long)newGrid * newGrid, d).to(pos.dtype);
        return cat(new[] { cls, patches }, 1);
    }

    private static int GridOf(Tensor pos, string path)
    {
        long rows = pos.shape[1] - 1;
        int grid = (int)Math.Round(Math.Sqrt(rows));
        if (rows < 1 || (long)grid * grid != rows || pos.shape[0] != 1)
        {
            throw new InvalidDataException(
                $"'{path}': 'pos_embed' has shape [{string.Join(", ", pos.shape)}]; expected [1, 1 + g², D] (a cls row and a square g×g grid).");
        }

        return grid;
    }

    private static Tensor Require(IReadOnlyDictionary<string, Tensor> weights, string key, string path, int rank)
    {
        if (!weights.TryGetValue(key, out var value) || value.dim() != rank)
        {
            throw new InvalidDataException(
                $"'{path}' has no encoder tensor '{key}' of rank {rank}, so its architecture cannot be inferred. Is it a ViT encoder (official, MAE/timm or Hugging Face names)? " +
                "Otherwise give BootMaePyTorchImportOptions.Architecture.");
        }

        return value;
    }
}
