using System.Globalization;
using System.Text.Json;
using Google.Protobuf;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Persistence;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace Microsoft.ML.BootMae.OnnxExport;

/// <summary>
/// Writes BootMAE networks as ONNX graphs of standard operators (opset 17: <c>LayerNormalization</c>, exact GELU via
/// <c>Erf</c>), float32 only, one dynamic batch dimension. The graph repeats the TorchSharp forward pass step for step:
/// the pixel scaling of <c>ImageDecoder</c> (0..255 → [0, 1], BT.601 luma for a grey encoder), the architecture's
/// input normalisation, patch embedding, cls token and fixed sin-cos table, the pre-norm blocks with q/v biases, then the
/// final LN and the pooling of <c>BootMaeFeaturize</c>, or the classifier's raw-block mean, head and softmax.
/// </summary>
internal static class BootMaeOnnxExporter
{
    /// <summary>The ONNX operator set used; 17 is the first with <c>LayerNormalization</c>.</summary>
    internal const int Opset = 17;

    /// <summary>IR version 8, the one that goes with opset 17 (ONNX 1.12).</summary>
    internal const long IrVersion = 8;

    /// <summary>Input name: pixels as <c>ExtractPixels</c> gives them with its defaults.</summary>
    internal const string PixelsName = "pixels";

    /// <summary>The encoder's output name.</summary>
    internal const string FeaturesName = "features";

    /// <summary>The classifier's probabilities.</summary>
    internal const string ScoresName = "scores";

    /// <summary>The classifier's 0-based predicted class (int64).</summary>
    internal const string PredictedName = "predicted";

    /// <summary>A protobuf message, and so a single-file ONNX model, must stay under 2 GiB; this leaves room for the graph itself.</summary>
    internal const long MaxWeightBytes = int.MaxValue - (16L << 20);

    /// <summary>Input channels: always the three planes of <c>ExtractPixels</c>' default RGB extraction.</summary>
    internal const int InputChannels = 3;

    /// <summary>
    /// Throws <see cref="NotSupportedException"/> when the network cannot be written as a single-file ONNX model: its
    /// float32 weights would pass protobuf's 2 GiB message limit (ONNX external data is not written by this exporter).
    /// Checked from the architecture alone, before any weight is copied.
    /// </summary>
    internal static void CheckExpressible(BootMaeArchitecture architecture, int extraParameters = 0)
    {
        double bytes = (VisionTransformerEncoder.StateElementCount(architecture) + extraParameters) * sizeof(float);
        if (bytes > MaxWeightBytes)
        {
            throw new NotSupportedException(
                $"This encoder ({BootMaeEncoder.Describe(architecture)}) has {bytes / (1 << 30):F1} GiB of float32 weights, more than the " +
                $"{MaxWeightBytes / (double)(1 << 30):F1} GiB a single-file ONNX model can hold (protobuf's 2 GiB message limit). " +
                "ONNX export with external weight files is not supported; serve such a model with LoadBootMae (TorchSharp).");
        }
    }

    /// <summary>The full path to write: its folder must exist and it must not be a folder.</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    internal static string ResolveTarget(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            throw new ArgumentException($"'{full}' is a folder; give the path of the .onnx file to write, e.g. '{Path.Combine(full, "model.onnx")}'.", nameof(path));
        }

        var folder = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(folder))
        {
            throw new DirectoryNotFoundException(
                $"Cannot export the ONNX model to '{full}': the folder '{folder}' does not exist. Create it first (the exporter does not create folders, so a mistyped path fails here).");
        }

        return full;
    }

    /// <summary>The encoder's graph: pixels → features ([batch, D], or [batch, N, D] for Tokens).</summary>
    internal static ModelProto BuildEncoder(VisionTransformerEncoder module, BootMaeArchitecture a, BootMaePooling pooling, int sourceBlock)
    {
        CheckExpressible(a);
        var w = ReadWeights(module, string.Empty);
        var g = new OnnxGraphBuilder("bootmae_encoder");
        g.Input(PixelsName, DataType.Float, "batch", InputChannels, a.ImageSize, a.ImageSize);
        var tokens = Trunk(g, w, a, sourceBlock, string.Empty);
        tokens = LayerNorm(g, w, "norm", tokens);
        var patches = g.Node("Slice", "patch_tokens", [tokens, g.Int64s("one", 1), g.Int64s("end", long.MaxValue), g.Int64s("axis1", 1)]);
        string features;
        object[] dims;
        switch (pooling)
        {
            case BootMaePooling.Cls:
                features = g.Node("Gather", "cls_feature", [tokens, g.Int64Scalar("index0", 0)], OnnxGraphBuilder.Int("axis", 1));
                dims = ["batch", a.EmbedDim];
                break;
            case BootMaePooling.Tokens:
                features = patches;
                dims = ["batch", a.NumPatches, a.EmbedDim];
                break;
            case BootMaePooling.Mean:
                features = g.Node("ReduceMean", "mean_feature", [patches], OnnxGraphBuilder.Ints("axes", 1), OnnxGraphBuilder.Int("keepdims", 0));
                dims = ["batch", a.EmbedDim];
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(pooling), pooling, "Pooling must be Mean, Cls or Tokens.");
        }

        g.Output(FeaturesName, features, DataType.Float, dims);
        var metadata = CommonMetadata("encoder", a, sourceBlock);
        metadata.Add(new("bootmae.pooling", pooling.ToString()));
        return g.ToModel(IrVersion, Opset,
            $"BootMAE encoder: '{PixelsName}' float32 [batch, 3, {a.ImageSize}, {a.ImageSize}] (planar RGB, 0..255, as ExtractPixels gives by default) → " +
            $"'{FeaturesName}' ({pooling} pooling of block {sourceBlock} after the final LayerNorm), as BootMaeFeaturize computes it.", metadata);
    }

    /// <summary>The classifier's graph: pixels → scores (softmax, [batch, K]) and predicted (int64 [batch], 0-based).</summary>
    internal static ModelProto BuildClassifier(ImageClassifier model, IReadOnlyList<string>? classNames)
    {
        var a = model.Encoder.Architecture;
        int k = model.NumberOfClasses;
        CheckExpressible(a, (a.EmbedDim * (k + 4)) + k);
        var w = ReadWeights(model, string.Empty);
        var g = new OnnxGraphBuilder("bootmae_classifier");
        g.Input(PixelsName, DataType.Float, "batch", InputChannels, a.ImageSize, a.ImageSize);
        // The fine-tuned network replaces the final LN by identity: raw block output, mean of the patch tokens.
        var tokens = Trunk(g, w, a, model.SourceBlock, "encoder.");
        var patches = g.Node("Slice", "patch_tokens", [tokens, g.Int64s("one", 1), g.Int64s("end", long.MaxValue), g.Int64s("axis1", 1)]);
        var x = g.Node("ReduceMean", "mean_feature", [patches], OnnxGraphBuilder.Ints("axes", 1), OnnxGraphBuilder.Int("keepdims", 0));
        x = LayerNorm(g, w, "classifier.fc_norm", x);
        if (model.IsLinearProbe)
        {
            // BatchNorm1d(affine: false) in eval mode: running statistics, unit scale, zero shift.
            var ones = Enumerable.Repeat(1f, a.EmbedDim).ToArray();
            x = g.Node("BatchNormalization", "classifier.bn", [
                x, g.Floats("classifier.bn.scale", ones, a.EmbedDim), g.Floats("classifier.bn.shift", new float[a.EmbedDim], a.EmbedDim),
                Weight(g, w, "classifier.bn.running_mean"), Weight(g, w, "classifier.bn.running_var"),
            ], OnnxGraphBuilder.Float("epsilon", 1e-6f), OnnxGraphBuilder.Int("training_mode", 0));
        }

        var logits = Linear(g, w, "classifier.head", x);
        var scores = g.Node("Softmax", "softmax", [logits], OnnxGraphBuilder.Int("axis", -1));
        // The first largest probability, as the PredictedLabel column picks it.
        var predicted = g.Node("ArgMax", "argmax", [scores], OnnxGraphBuilder.Int("axis", 1), OnnxGraphBuilder.Int("keepdims", 0), OnnxGraphBuilder.Int("select_last_index", 0));
        g.Output(ScoresName, scores, DataType.Float, "batch", k);
        g.Output(PredictedName, predicted, DataType.Int64, "batch");

        var metadata = CommonMetadata("classifier", a, model.SourceBlock);
        metadata.Add(new("bootmae.numberOfClasses", k.ToString(CultureInfo.InvariantCulture)));
        metadata.Add(new("bootmae.head", model.IsLinearProbe ? "linear-probe" : "fine-tune"));
        if (classNames is not null)
        {
            metadata.Add(new("bootmae.classNames", JsonSerializer.Serialize(classNames)));
        }

        return g.ToModel(IrVersion, Opset,
            $"BootMAE image classifier: '{PixelsName}' float32 [batch, 3, {a.ImageSize}, {a.ImageSize}] (planar RGB, 0..255) → '{ScoresName}' " +
            $"(softmax probabilities, [batch, {k}], the Score column) and '{PredictedName}' (int64 0-based class index; PredictedLabel is it + 1). " +
            "Class names, in index order, are the JSON array in the metadata key 'bootmae.classNames'.", metadata);
    }

    /// <summary>Serialises a model to <paramref name="fullPath"/> atomically (staging file, flush, rename).</summary>
    internal static void Write(ModelProto model, string fullPath)
    {
        DurableFiles.WriteAtomically(fullPath, stream =>
        {
            using var coded = new CodedOutputStream(stream, leaveOpen: true);
            model.WriteTo(coded);
            coded.Flush();
        });
    }

    private static List<KeyValuePair<string, string>> CommonMetadata(string kind, BootMaeArchitecture a, int sourceBlock) =>
    [
        new("bootmae.model", kind),
        new("bootmae.architecture", JsonSerializer.Serialize(a)),
        new("bootmae.sourceBlock", sourceBlock.ToString(CultureInfo.InvariantCulture)),
        new("bootmae.input", $"{PixelsName}: float32 [batch, 3, {a.ImageSize}, {a.ImageSize}], planar RGB, 0..255 (ExtractPixels defaults)"),
    ];

    // pixels → cls + patch tokens through blocks 0..lastBlock, raw (no final LN): [batch, 1 + N, D].
    private static string Trunk(OnnxGraphBuilder g, IReadOnlyDictionary<string, (float[] Data, long[] Shape)> w, BootMaeArchitecture a, int lastBlock, string prefix)
    {
        int d = a.EmbedDim;
        // ImageDecoder: clamp(p / 255, 0, 1) per plane, or clamp(luma(r, g, b) / 255, 0, 1) for one channel; then the normalisation.
        var x = PixelsName;
        if (a.Channels == 1)
        {
            x = g.Node("Conv", "luma", [x, g.Floats("luma.weight", new[] { 0.299f, 0.587f, 0.114f }, 1, 3, 1, 1)], OnnxGraphBuilder.Ints("kernel_shape", 1, 1));
        }

        x = g.Node("Mul", "pixels01", [x, g.Scalar("inv255", 1f / 255f)]);
        x = g.Node("Clip", "pixels01_clipped", [x, g.Scalar("zero", 0f), g.Scalar("one_f", 1f)]);
        var n = a.Normalization;
        if (n.IsBootMae)
        {
            x = g.Node("Mul", "pixels_x2", [x, g.Scalar("two", 2f)]);
            x = g.Node("Sub", "pixels_normalized", [x, g.Scalar("one_f", 1f)]);
        }
        else
        {
            // (x − mean[c]) / std[c] with 1×C×1×1 constants, as InputNormalization does in float32.
            var mean = Enumerable.Range(0, a.Channels).Select(c => (float)n.MeanOf(c)).ToArray();
            var std = Enumerable.Range(0, a.Channels).Select(c => (float)n.StdOf(c)).ToArray();
            x = g.Node("Sub", "pixels_centred", [x, g.Floats("normalization.mean", mean, 1, a.Channels, 1, 1)]);
            x = g.Node("Div", "pixels_normalized", [x, g.Floats("normalization.std", std, 1, a.Channels, 1, 1)]);
        }

        // Patch embedding: Conv with kernel = stride = P, then B×D×G×G → B×N×D.
        x = g.Node("Conv", "patch_embed", [x, Weight(g, w, prefix + "patch_embed.proj.weight"), Weight(g, w, prefix + "patch_embed.proj.bias")],
            OnnxGraphBuilder.Ints("kernel_shape", a.PatchSize, a.PatchSize), OnnxGraphBuilder.Ints("strides", a.PatchSize, a.PatchSize));
        x = g.Node("Reshape", "patch_embed.flat", [x, g.Int64s("shape", 0, d, -1)]);
        x = g.Node("Transpose", "patch_embed.tokens", [x], OnnxGraphBuilder.Ints("perm", 0, 2, 1));
        var (pos, _) = w[prefix + "pos_embed"];
        x = g.Node("Add", "patch_tokens_pos", [x, g.Floats("pos_embed.patches", pos.AsSpan(d), 1, a.NumPatches, d)]);

        // cls_token + its (zero) table row, computed once in float32 as TorchSharp adds them, broadcast over the batch.
        var (cls, _) = w[prefix + "cls_token"];
        var clsPos = new float[d];
        for (int i = 0; i < d; i++)
        {
            clsPos[i] = cls[i] + pos[i];
        }

        var batch = g.Node("Shape", "batch_size", [PixelsName], OnnxGraphBuilder.Int("start", 0), OnnxGraphBuilder.Int("end", 1));
        var clsShape = g.Node("Concat", "cls_shape", [batch, g.Int64s("one_d", 1, d)], OnnxGraphBuilder.Int("axis", 0));
        var clsTokens = g.Node("Expand", "cls_tokens", [g.Floats("cls_token_pos", clsPos, 1, 1, d), clsShape]);
        x = g.Node("Concat", "tokens", [clsTokens, x], OnnxGraphBuilder.Int("axis", 1));

        for (int i = 0; i <= lastBlock; i++)
        {
            x = Block(g, w, a, $"{prefix}blocks.{i}.", x);
        }

        return x;
    }

    // x + Attn(LN1 x), then + MLP(LN2 x).
    private static string Block(OnnxGraphBuilder g, IReadOnlyDictionary<string, (float[] Data, long[] Shape)> w, BootMaeArchitecture a, string p, string x)
    {
        int heads = a.Heads;
        var (qkvWeight, qkvShape) = w[p + "attn.qkv.weight"];
        int inner = (int)qkvShape[0] / 3;
        int headDim = inner / heads;

        var h = LayerNorm(g, w, p + "norm1", x);
        // qkv = h·Wᵀ + [q_bias, 0, v_bias] (the key has no bias).
        var (qBias, _) = w[p + "attn.q_bias"];
        var (vBias, _) = w[p + "attn.v_bias"];
        var bias = new float[3 * inner];
        qBias.CopyTo(bias, 0);
        vBias.CopyTo(bias, 2 * inner);
        var qkv = g.Node("MatMul", p + "attn.qkv", [h, g.Floats(p + "attn.qkv.weight_t", Transpose(qkvWeight, qkvShape), qkvShape[1], qkvShape[0])]);
        qkv = g.Node("Add", p + "attn.qkv_biased", [qkv, g.Floats(p + "attn.qkv.bias", bias, 3 * inner)]);
        qkv = g.Node("Reshape", p + "attn.qkv_split", [qkv, g.Int64s("qkv_shape", 0, 0, 3, heads, headDim)]);
        qkv = g.Node("Transpose", p + "attn.qkv_heads", [qkv], OnnxGraphBuilder.Ints("perm", 2, 0, 3, 1, 4));
        var q = g.Node("Gather", p + "attn.q", [qkv, g.Int64Scalar("index0", 0)], OnnxGraphBuilder.Int("axis", 0));
        var k = g.Node("Gather", p + "attn.k", [qkv, g.Int64Scalar("index1", 1)], OnnxGraphBuilder.Int("axis", 0));
        var v = g.Node("Gather", p + "attn.v", [qkv, g.Int64Scalar("index2", 2)], OnnxGraphBuilder.Int("axis", 0));
        // softmax(q·kᵀ / √d)·v, scaled_dot_product_attention's default scale.
        var kt = g.Node("Transpose", p + "attn.k_t", [k], OnnxGraphBuilder.Ints("perm", 0, 1, 3, 2));
        var scores = g.Node("MatMul", p + "attn.scores", [q, kt]);
        scores = g.Node("Mul", p + "attn.scores_scaled", [scores, g.Scalar("attn_scale", (float)(1.0 / Math.Sqrt(headDim)))]);
        var weights = g.Node("Softmax", p + "attn.weights", [scores], OnnxGraphBuilder.Int("axis", -1));
        var o = g.Node("MatMul", p + "attn.out_heads", [weights, v]);
        o = g.Node("Transpose", p + "attn.out_tokens", [o], OnnxGraphBuilder.Ints("perm", 0, 2, 1, 3));
        o = g.Node("Reshape", p + "attn.out", [o, g.Int64s("merge_heads", 0, 0, inner)]);
        o = Linear(g, w, p + "attn.proj", o);
        x = g.Node("Add", p + "residual1", [x, o]);

        h = LayerNorm(g, w, p + "norm2", x);
        h = Linear(g, w, p + "mlp.fc1", h);
        h = Gelu(g, p + "mlp.gelu", h);
        h = Linear(g, w, p + "mlp.fc2", h);
        return g.Node("Add", p + "residual2", [x, h]);
    }

    // Exact GELU: 0.5·x·(1 + erf(x/√2)).
    private static string Gelu(OnnxGraphBuilder g, string name, string x)
    {
        var e = g.Node("Mul", name + ".scaled", [x, g.Scalar("inv_sqrt2", (float)(1.0 / Math.Sqrt(2.0)))]);
        e = g.Node("Erf", name + ".erf", [e]);
        e = g.Node("Add", name + ".one_plus", [e, g.Scalar("one_f", 1f)]);
        var half = g.Node("Mul", name + ".half", [x, g.Scalar("half", 0.5f)]);
        return g.Node("Mul", name, [half, e]);
    }

    private static string LayerNorm(OnnxGraphBuilder g, IReadOnlyDictionary<string, (float[] Data, long[] Shape)> w, string name, string x) =>
        g.Node("LayerNormalization", name, [x, Weight(g, w, name + ".weight"), Weight(g, w, name + ".bias")],
            OnnxGraphBuilder.Int("axis", -1), OnnxGraphBuilder.Float("epsilon", 1e-6f));

    // x·Wᵀ + b with W stored [out, in] as TorchSharp keeps it.
    private static string Linear(OnnxGraphBuilder g, IReadOnlyDictionary<string, (float[] Data, long[] Shape)> w, string name, string x)
    {
        var (weight, shape) = w[name + ".weight"];
        var y = g.Node("MatMul", name, [x, g.Floats(name + ".weight_t", Transpose(weight, shape), shape[1], shape[0])]);
        return g.Node("Add", name + ".biased", [y, Weight(g, w, name + ".bias")]);
    }

    private static string Weight(OnnxGraphBuilder g, IReadOnlyDictionary<string, (float[] Data, long[] Shape)> w, string name)
    {
        if (!w.TryGetValue(name, out var value))
        {
            throw new InvalidOperationException($"ONNX export: the network has no weight '{name}'.");
        }

        return g.Floats(name, value.Data, value.Shape);
    }

    private static float[] Transpose(float[] matrix, long[] shape)
    {
        int rows = (int)shape[0], cols = (int)shape[1];
        var result = new float[matrix.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                result[(c * rows) + r] = matrix[(r * cols) + c];
            }
        }

        return result;
    }

    // Every floating tensor of the module's state_dict as float32 values on the host.
    private static Dictionary<string, (float[] Data, long[] Shape)> ReadWeights(nn.Module module, string prefix)
    {
        using var scope = NewDisposeScope();
        using var mode = no_grad();
        var result = new Dictionary<string, (float[], long[])>(StringComparer.Ordinal);
        foreach (var (key, value) in module.state_dict())
        {
            if (!is_floating_point(value) || !key.StartsWith(prefix, StringComparison.Ordinal))
            {
                continue;
            }

            var host = value.detach().to(ScalarType.Float32).cpu().contiguous();
            result[key] = (host.data<float>().ToArray(), host.shape);
        }

        return result;
    }
}
