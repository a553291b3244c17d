using System.Collections;
using System.Collections.Specialized;
using System.Globalization;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

/// <summary>
/// AdamW state between our <see cref="OwnedAdamW"/> and the official optimizer's <c>state_dict</c> (torch's AdamW over the
/// two groups of the official <c>create_adamw_optimizer</c>), for <see cref="OfficialCheckpoint"/>.
/// </summary>
internal static class OfficialOptimizerState
{
    // The official optimizer's state_dict: param_groups[g]['params'] are ids numbered over the groups in order, each group
    // listing its parameters in named_parameters order; state[id] holds step, exp_avg, exp_avg_sq.
    public static Dictionary<string, (long, Tensor, Tensor)> FromTorch(IDictionary optimizer, string path, IReadOnlyDictionary<string, Tensor> model)
    {
        if (optimizer["param_groups"] is not IList groups || optimizer["state"] is not IDictionary state)
        {
            throw new InvalidDataException($"'{path}': 'optimizer' is not a torch optimizer state_dict (no 'param_groups' list or 'state' dictionary).");
        }

        var expected = OfficialLayout.Groups(OfficialLayout.NamesIn(model), name => model[name].dim()).Select(g => g.Names).ToList();
        var found = groups.Cast<object>().Select(g => g is IDictionary d && d["params"] is IList ids ? ids.Cast<object>().ToList() : null).ToList();
        if (found.Any(g => g is null) || found.Count != expected.Count || found.Zip(expected).Any(x => x.First!.Count != x.Second.Count))
        {
            throw new InvalidDataException(
                $"'{path}': the optimizer has parameter groups of sizes [{string.Join(", ", found.Select(g => g?.Count ?? -1))}], but the official create_adamw_optimizer " +
                $"makes [{string.Join(", ", expected.Select(g => g.Count))}] (no-decay, decay) for this model. It was saved from another optimizer or model.");
        }

        var result = new Dictionary<string, (long, Tensor, Tensor)>(StringComparer.Ordinal);
        for (int g = 0; g < expected.Count; g++)
        {
            for (int j = 0; j < expected[g].Count; j++)
            {
                string name = expected[g][j];
                var id = found[g]![j];
                if (!state.Contains(id) || state[id] is not IDictionary entry)
                {
                    continue; // a parameter that never had a gradient has no state
                }

                if (entry["exp_avg"] is not Tensor m || entry["exp_avg_sq"] is not Tensor v)
                {
                    throw new InvalidDataException($"'{path}': the optimizer state of '{name}' (id {id}) has no exp_avg / exp_avg_sq tensors; is it AdamW's?");
                }

                long step = entry["step"] switch
                {
                    Tensor t => (long)t.to(ScalarType.Float64).item<double>(),
                    { } number => Convert.ToInt64(number, CultureInfo.InvariantCulture),
                    null => throw new InvalidDataException($"'{path}': the optimizer state of '{name}' (id {id}) has no step."),
                };
                if (!m.shape.SequenceEqual(model[name].shape) || !v.shape.SequenceEqual(model[name].shape))
                {
                    throw new InvalidDataException($"'{path}': the optimizer moments for '{name}' have shape [{string.Join(", ", m.shape)}], the parameter [{string.Join(", ", model[name].shape)}].");
                }

                result[name] = (step, m, v);
            }
        }

        return result;
    }

    public static OrderedDictionary Export(BootMaeArchitecture a, BootMaeNetwork student, OwnedAdamW optimizer,
        IReadOnlyDictionary<string, Tensor> studentState, Dictionary<string, Tensor> flat, out int withState)
    {
        var index = OurIndex(student);
        int decayCount = optimizer.ParamGroups[0].Parameters.Count;
        var state = new OrderedDictionary();
        var paramGroups = new ArrayList();
        int id = 0;
        withState = 0;
        foreach (var (noDecay, names) in OfficialLayout.Groups(OfficialLayout.TrainableNames(a), name => studentState[name].dim()))
        {
            var ids = new ArrayList();
            foreach (var name in names)
            {
                int i = index[name];
                if ((i >= decayCount) != noDecay)
                {
                    // Our split (ParameterGroups.IsNoDecay) must be the official one, or the moments would go on under another weight decay.
                    throw new InvalidOperationException($"'{name}' is in the {(noDecay ? "decay" : "no-decay")} group here but in the other one in the official optimizer.");
                }

                var (step, expAvg, expAvgSq) = optimizer.StateOf(i);
                var m = OfficialCheckpoint.HostCopy(expAvg);
                var v = OfficialCheckpoint.HostCopy(expAvgSq);
                flat[OfficialCheckpoint.ExpAvgPrefix + name] = m;
                flat[OfficialCheckpoint.ExpAvgSqPrefix + name] = v;
                flat[OfficialCheckpoint.StepPrefix + name] = tensor(step);
                if (step > 0)
                {
                    // torch keeps no state for a parameter that never had a gradient. An int step is what torch 1.7 (the
                    // official setup) stores; newer torch turns it into a tensor when it loads the state.
                    state.Add(id, new OrderedDictionary { { "step", step }, { "exp_avg", m }, { "exp_avg_sq", v } });
                    withState++;
                }

                ids.Add(id++);
            }

            var group = optimizer.ParamGroups[noDecay ? 1 : 0];
            paramGroups.Add(new OrderedDictionary
            {
                { "lr", group.LearningRate },
                { "betas", new object[] { group.Beta1, group.Beta2 } },
                { "eps", group.Epsilon },
                { "weight_decay", group.WeightDecay },
                { "amsgrad", false },
                { "maximize", false },
                { "foreach", null },
                { "capturable", false },
                { "lr_scale", 1.0 }, // train_one_epoch sets lr = schedule · lr_scale
                { "params", ids },
            });
        }

        return new OrderedDictionary { { "state", state }, { "param_groups", paramGroups } };
    }

    // Reference (official) name → index of that parameter's state in our optimizer (decay group, then no-decay group).
    public static Dictionary<string, int> OurIndex(BootMaeNetwork student)
    {
        var (decay, noDecay) = ParameterGroups.Split(student);
        return decay.Concat(noDecay).Select((x, i) => (Name: BootMaeNetwork.ToReferenceKey(x.Name), i))
            .ToDictionary(x => x.Name, x => x.i, StringComparer.Ordinal);
    }
}
