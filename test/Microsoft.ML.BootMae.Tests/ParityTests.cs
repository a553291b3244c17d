using System.Text.Json;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Numerical parity with the PyTorch reference written by tools/make_parity_fixtures.py (python3-torch 1.13, CPU, fp32).
/// Weights are loaded by the reference's state-dict names. Tolerances (|diff| ≤ atol + rtol·|expected|):
/// activations and teacher targets 1e-4/1e-4; losses 1e-5/1e-5; gradients 1e-5/1e-3; weights after one AdamW step
/// (lr 1e-2, so a flipped update would be off by ~2e-2) 1e-5/1e-4 where the reference |g| ≥ 1e-6, else ≤ 2·lr; EMA teacher 1e-5/1e-4; sin-cos tables 1e-6.
/// </summary>
[TestClass]
public sealed class ParityTests
{
    private const double ActAtol = 1e-4, ActRtol = 1e-4;
    private const double LossTol = 1e-5;
    private const double GradAtol = 1e-5, GradRtol = 1e-3;
    private const double StepAtol = 1e-5, StepRtol = 1e-4;

    private static string Dir => Path.Combine(AppContext.BaseDirectory, "TestData", "parity");

    internal static BootMaeArchitecture Architecture { get; } = new()
    {
        ImageSize = 16, PatchSize = 4, Channels = 3, EmbedDim = 32, Depth = 2, Heads = 2, MlpRatio = 4,
        RegressorDim = 24, RegressorHeads = 2, PredictorHeads = 4, DecoderDepth = 2, ShallowBlock = 0, DeepBlock = 1,
    };

    private static JsonElement Scalars()
        => JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "parity.json"))).RootElement;

    private static Dictionary<string, Tensor> WithPrefix(Dictionary<string, Tensor> all, string prefix)
        => all.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
              .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value);

    private static MaskBatch Masks(Dictionary<string, Tensor> f, int numKeep)
    {
        var ids = f["in.ids_shuffle"];
        return MaskBatch.FromShuffle(ids.data<long>().ToArray(), (int)ids.shape[0], (int)ids.shape[1], numKeep);
    }

    [TestMethod]
    public void SinCosTablesMatchReference()
    {
        using var scope = NewDisposeScope();
        var f = Safetensors.Load(Path.Combine(Dir, "bootmae.safetensors"));
        using var net = new BootMaeNetwork(Architecture, OfficialSettings.Create());
        var own = net.ReferenceStateDict();
        TensorAssert.Close(f["table.pos_embed"], own["pos_embed"], 1e-6, 0, "pos_embed");
        TensorAssert.Close(f["table.de_pos_embed"], own["de_pos_embed"], 1e-6, 0, "de_pos_embed");
    }

    [TestMethod]
    public void BootMaeForwardLossGradientsStepAndEmaMatchPyTorch()
    {
        using var scope = NewDisposeScope();
        var f = Safetensors.Load(Path.Combine(Dir, "bootmae.safetensors"));
        var scalars = Scalars();
        var cfg = scalars.GetProperty("config");
        using var net = new BootMaeNetwork(Architecture, OfficialSettings.Create());
        var weights = WithPrefix(f, "w.");
        weights["pos_embed"] = f["table.pos_embed"];
        weights["de_pos_embed"] = f["table.de_pos_embed"];
        net.LoadReferenceStateDict(weights);
        using var teacher = new MomentumTeacher(net.Encoder);
        using var masks = Masks(f, cfg.GetProperty("num_keep").GetInt32());
        var images = f["in.images"];

        TensorAssert.Equal(f["in.ids_restore"], masks.IdsRestore, "ids_restore");
        TensorAssert.Equal(f["in.mask"], masks.Mask, "mask");

        var forward = net.Forward(images, masks);
        TensorAssert.Close(f["out.latent"], forward.Encoder.Latent, ActAtol, ActRtol, "encoder output");
        TensorAssert.Close(f["out.shallow"], forward.Encoder.Shallow, ActAtol, ActRtol, "shallow feature");
        TensorAssert.Close(f["out.deep"], forward.Encoder.Deep, ActAtol, ActRtol, "deep feature");
        TensorAssert.Close(f["out.pixels"], forward.Pixels, ActAtol, ActRtol, "regressor output");
        TensorAssert.Close(f["out.features"], forward.Features!, ActAtol, ActRtol, "predictor output");

        var target = teacher.Forward(images);
        TensorAssert.Close(f["out.teacher"], target, ActAtol, ActRtol, "teacher target");
        TensorAssert.Close(f["out.weight_mask"], BootMaeLosses.WeightMask(masks.Mask, Architecture.GridSize, true), 1e-6, 0, "weight mask");
        TensorAssert.Close(f["out.pixel_target"], BootMaeLosses.PixelTarget(images, Architecture.PatchSize, true), ActAtol, ActRtol, "pixel target");

        var loss = BootMaeLosses.Compute(net, forward, images, masks, target, null, cfg.GetProperty("feature_weight").GetDouble());
        Assert.AreEqual(scalars.GetProperty("loss_pixel").GetDouble(), loss.Pixel!.item<float>(), LossTol * scalars.GetProperty("loss_pixel").GetDouble(), "L_R");
        Assert.AreEqual(scalars.GetProperty("loss_feature").GetDouble(), loss.Feature!.item<float>(), LossTol * scalars.GetProperty("loss_feature").GetDouble(), "L_P");
        Assert.AreEqual(scalars.GetProperty("loss_total").GetDouble(), loss.Total.item<float>(), LossTol * scalars.GetProperty("loss_total").GetDouble(), "L");

        loss.Total.backward();
        var grads = WithPrefix(f, "grad.");
        int compared = 0;
        foreach (var (name, p) in net.named_parameters())
        {
            string key = BootMaeNetwork.ToReferenceKey(name);
            if (p.requires_grad)
            {
                TensorAssert.Close(grads[key], p.grad!, GradAtol, GradRtol, "grad " + key);
                compared++;
            }
        }

        Assert.AreEqual(grads.Count, compared, "every reference gradient has a trainable C# parameter");

        using var optimizer = ParameterGroups.CreateAdamW(net, cfg.GetProperty("lr").GetDouble(), cfg.GetProperty("weight_decay").GetDouble());
        optimizer.Step();
        var stepped = WithPrefix(f, "step.");
        var after = net.ReferenceStateDict();
        double lr = cfg.GetProperty("lr").GetDouble();
        foreach (var (key, expected) in stepped)
        {
            // Adam's first step is lr·g/(|g| + 1e-8): where the reference |g| is below 1e-6 (19 of ~85k entries here)
            // fp32 noise in g changes the update itself, so those entries are only bounded by the step size.
            using var reliable = grads[key].abs().ge(1e-6);
            TensorAssert.Close(expected.masked_select(reliable), after[key].masked_select(reliable), StepAtol, StepRtol, "after AdamW " + key);
            using var diff = (expected - after[key]).abs().max();
            Assert.IsLessThanOrEqualTo(2 * lr, diff.item<float>(), "after AdamW (all entries) " + key);
        }

        teacher.Update(net.Encoder, cfg.GetProperty("ema_momentum").GetDouble());
        var ema = WithPrefix(f, "ema.");
        var teacherState = teacher.Encoder.state_dict();
        foreach (var (key, expected) in ema)
        {
            TensorAssert.Close(expected, teacherState[key], StepAtol, StepRtol, "EMA " + key);
        }
    }

    [TestMethod]
    public void MaeModeDecoderAndLossMatchPyTorch()
    {
        using var scope = NewDisposeScope();
        var f = Safetensors.Load(Path.Combine(Dir, "mae.safetensors"));
        var boot = Safetensors.Load(Path.Combine(Dir, "bootmae.safetensors"));
        var scalars = Scalars();
        var cfg = scalars.GetProperty("config");
        var settings = OfficialSettings.Create(s => { s.Mode = BootMaeMode.Mae; s.MaeDecoderDepth = cfg.GetProperty("mae_dec_depth").GetInt32(); });
        using var net = new BootMaeNetwork(Architecture, settings);
        var weights = WithPrefix(f, "w.");
        weights["pos_embed"] = boot["table.pos_embed"];
        weights["decoder_pos_embed"] = boot["table.de_pos_embed"];
        net.LoadReferenceStateDict(weights);
        using var masks = Masks(boot, cfg.GetProperty("num_keep").GetInt32());
        var images = boot["in.images"];

        var forward = net.Forward(images, masks);
        TensorAssert.Close(f["out.pred"], forward.Pixels, ActAtol, ActRtol, "MAE decoder output");
        var loss = BootMaeLosses.Compute(net, forward, images, masks, null, null, 0);
        double expected = scalars.GetProperty("loss_mae").GetDouble();
        Assert.AreEqual(expected, loss.Total.item<float>(), LossTol * expected, "MAE loss");
        loss.Total.backward();
        var named = net.named_parameters().ToDictionary(kv => BootMaeNetwork.ToReferenceKey(kv.name), kv => kv.parameter);
        TensorAssert.Close(f["grad.decoder_pred.weight"], named["decoder_pred.weight"].grad!, GradAtol, GradRtol, "grad decoder_pred.weight");
        TensorAssert.Close(f["grad.blocks.0.attn.qkv.weight"], named["blocks.0.attn.qkv.weight"].grad!, GradAtol, GradRtol, "grad blocks.0.attn.qkv.weight");
    }
}
