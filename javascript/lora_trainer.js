// LoRA Trainer: small browser glue for the WebUI (loaded by the WebUI from javascript/).
//
// - lora_trainer_send_to_txt2img(prompt): put a prompt (e.g. "<lora:name:0.8> trigger")
//   into txt2img's prompt box and switch to the txt2img tab. Usable as a gradio `_js`
//   function: it returns its arguments unchanged.
// - lora_trainer_send_xyz_to_txt2img(payload_json): fill txt2img with an epoch comparison
//   so the user can tweak it and generate by hand: prompt, negative prompt, seed, the
//   "X/Y/Z plot" script (title compared casefolded: Forge classic says "X/Y/Z Plot"), its
//   X/Y/Z types (by label, e.g. "Prompt S/R") and values, "Use text inputs instead of
//   dropdowns", and the size (steps, CFG, sampler when given). The payload is JSON from
//   lora_trainer/ui/compare_logic.py (send_payload). Returns [payload_json]: wire it with the
//   payload box as its one input and one output (Gradio 3 hands a JavaScript function the
//   outputs' values after the inputs and writes every value it returns into an output).
//   The filling goes on asynchronously (the script's UI
//   appears only after the WebUI's server has answered the script choice), and its
//   outcome is the promise lora_trainer_send_xyz_to_txt2img.last ({ok, problems}).
// - While the LoRA Trainer tab is visible, the hidden button #lora_trainer_refresh_button
//   (if the tab has one) is clicked every `opts.lora_trainer_poll_seconds` seconds
//   (default 2; 0 turns it off) so progress and the queue stay current.
//
// Gradio dropdowns (3.41 in AUTOMATIC1111, 4.40 in Forge) keep their value in Svelte
// state, not in the <input>: setting input.value does nothing. Both versions open the
// option list when the input gets focus and take a choice on mousedown on the option's
// <li> (aria-label = the choice's name in both), which is what a user's click does.

/* global gradioApp, onUiLoaded, opts, updateInput, switch_to_txt2img, uiElementIsVisible */

function lora_trainer_app() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

function lora_trainer_set_text(textarea, value) {
    // textboxes and number inputs: Gradio binds them with bind:value, which listens to "input"
    if (!textarea) {
        return false;
    }
    textarea.value = value;
    if (typeof updateInput === "function") {
        updateInput(textarea);
    } else {
        textarea.dispatchEvent(new Event("input", {bubbles: true}));
    }
    textarea.dispatchEvent(new Event("change", {bubbles: true}));
    return true;
}

function lora_trainer_switch_to_txt2img() {
    if (typeof switch_to_txt2img === "function") {
        switch_to_txt2img();
        return;
    }
    // outside the WebUI (its ui.js defines switch_to_txt2img): the first top-level tab
    var tabs = lora_trainer_app().querySelector("#tabs");
    var button = tabs ? tabs.querySelector("button") : null;
    if (button) {
        button.click();
    }
}

function lora_trainer_send_to_txt2img(prompt) {
    var textarea = lora_trainer_app().querySelector("#txt2img_prompt textarea");
    if (typeof prompt === "string") {
        lora_trainer_set_text(textarea, prompt);
    }
    lora_trainer_switch_to_txt2img();
    return Array.from(arguments);
}

var lora_trainer_xyz = (function() {
    var STEP_MS = 50;

    function sleep(ms) {
        return new Promise(function(resolve) {
            setTimeout(resolve, ms);
        });
    }

    function visible(el) {
        if (!el) {
            return false;
        }
        if (typeof uiElementIsVisible === "function") {
            return uiElementIsVisible(el);
        }
        return el.getClientRects().length > 0;
    }

    // resolves with fn()'s first truthy value, or null after timeoutMs
    async function waitFor(fn, timeoutMs) {
        var deadline = Date.now() + timeoutMs;
        for (;;) {
            var value = fn();
            if (value) {
                return value;
            }
            if (Date.now() > deadline) {
                return null;
            }
            await sleep(STEP_MS);
        }
    }

    function fold(text) {
        return String(text || "").trim().toLocaleLowerCase();
    }

    function dropdownInput(block) {
        return block ? block.querySelector("input") : null;
    }

    function dropdownText(block) {
        var input = dropdownInput(block);
        return input ? input.value : null;
    }

    function options(block) {
        return Array.from(block.querySelectorAll("ul.options li, li.item"));
    }

    function optionName(li) {
        var name = li.getAttribute("aria-label");
        if (name === null) {
            name = li.getAttribute("data-value");
        }
        return name === null ? li.textContent.replace("\u2713", "") : name;
    }

    // choose `wanted` in a Gradio dropdown block (exact name, else casefolded);
    // "already" when it is chosen, "set" when chosen now, null when the choice does not exist
    async function choose(block, wanted) {
        var input = dropdownInput(block);
        if (!input) {
            return null;
        }
        if (input.value === wanted) {
            return "already";
        }
        input.focus();
        input.dispatchEvent(new FocusEvent("focus"));
        var items = await waitFor(function() {
            var found = options(block);
            return found.length ? found : null;
        }, 2000);
        if (!items) {
            input.blur();
            return null;
        }
        var exact = items.filter(function(li) {
            return optionName(li) === wanted;
        });
        var folded = items.filter(function(li) {
            return fold(optionName(li)) === fold(wanted);
        });
        var li = exact[0] || folded[0];
        if (!li) {
            input.blur();
            return null;
        }
        li.dispatchEvent(new MouseEvent("mousedown", {bubbles: true, cancelable: true}));
        input.blur();
        await waitFor(function() {
            return fold(input.value) === fold(optionName(li));
        }, 1000);
        return "set";
    }

    function checkbox(app, elemId) {
        var block = app.querySelector("#" + elemId);
        return block ? block.querySelector("input[type=checkbox]") : null;
    }

    function textbox(app, elemId) {
        var block = app.querySelector("#" + elemId);
        return block ? block.querySelector("textarea, input[type=text], input:not([type])") : null;
    }

    async function fill(payload) {
        var app = lora_trainer_app();
        var problems = [];
        var tab = payload.tab || "txt2img";

        lora_trainer_switch_to_txt2img();
        if (typeof payload.prompt === "string") {
            lora_trainer_set_text(app.querySelector("#" + tab + "_prompt textarea"), payload.prompt);
        }
        if (typeof payload.negative_prompt === "string") {
            lora_trainer_set_text(app.querySelector("#" + tab + "_neg_prompt textarea"), payload.negative_prompt);
        }
        if (payload.seed !== undefined && payload.seed !== null) {
            // a Number, or a Textbox with the WebUI's --use-textbox-seed
            if (!lora_trainer_set_text(app.querySelector("#" + tab + "_seed input, #" + tab + "_seed textarea"),
                String(payload.seed))) {
                problems.push("no seed box");
            }
        }
        // width, height, steps, CFG (sliders: their number box), the sampler (a dropdown, or radio buttons)
        var settings = payload.settings || [];
        for (var k = 0; k < settings.length; k++) {
            var setting = settings[k];
            var block = app.querySelector("#" + setting.elem_id);
            var wanted = String(setting.value);
            if (!block) {
                problems.push("no #" + setting.elem_id);
            } else if (setting.kind === "choice") {
                var radio = Array.from(block.querySelectorAll("input[type=radio]")).filter(function(r) {
                    var label = r.closest("label");
                    return r.value === wanted || (label && label.textContent.trim() === wanted);
                })[0];
                if (radio) {
                    radio.click();
                } else if ((await choose(block, wanted)) === null) {
                    problems.push("#" + setting.elem_id + " has no choice \"" + wanted + "\"");
                }
            } else if (!lora_trainer_set_text(block.querySelector("input[type=number], textarea, input[type=text]"),
                wanted)) {
                problems.push("no input in #" + setting.elem_id);
            }
        }
        if (!payload.script) {
            return {ok: problems.length === 0, problems: problems};
        }

        // the script list: A1111 and Forge both call it #script_list, once per tab
        var container = await waitFor(function() {
            var c = app.querySelector("#" + tab + "_script_container");
            return c && visible(c) ? c : null;
        }, 5000);
        var scriptList = container ? container.querySelector("#script_list") : null;
        if (!scriptList) {
            problems.push("no script list in " + tab);
            return {ok: false, problems: problems};
        }
        if ((await choose(scriptList, payload.script)) === null) {
            problems.push("the script list holds no \"" + payload.script + "\"");
            return {ok: false, problems: problems};
        }
        var prefix = payload.elem_prefix || ("script_" + tab + "_xyz_plot_");
        // the script's controls are shown once the server has answered the script choice
        var shown = await waitFor(function() {
            var block = app.querySelector("#" + prefix + "x_type");
            return visible(block) ? block : null;
        }, 15000);
        if (!shown) {
            problems.push("the X/Y/Z plot controls did not appear");
            return {ok: false, problems: problems};
        }

        var axes = (payload.axes || []).filter(function(a) {
            return a && a.axis;
        });
        var csv = checkbox(app, prefix + "csv_mode");
        async function apply() {
            if (payload.csv_mode !== undefined && csv && csv.checked !== Boolean(payload.csv_mode)) {
                csv.click();
                await sleep(4 * STEP_MS);
            }
            for (var i = 0; i < axes.length; i++) {
                var a = axes[i];
                var values = textbox(app, prefix + a.axis + "_values");
                // values before the type: the type's change event sends the values box along and
                // its answer writes them back, so it must already hold ours
                if (values && values.value !== (a.values || "")) {
                    lora_trainer_set_text(values, a.values || "");
                    await sleep(2 * STEP_MS);
                }
                var type = app.querySelector("#" + prefix + a.axis + "_type");
                if ((await choose(type, a.type)) === null) {
                    throw new Error("the " + a.axis.toUpperCase() + " type list holds no \"" + a.type + "\"");
                }
            }
        }
        function settled() {
            if (payload.csv_mode !== undefined && csv && csv.checked !== Boolean(payload.csv_mode)) {
                return false;
            }
            return axes.every(function(a) {
                var values = textbox(app, prefix + a.axis + "_values");
                var type = app.querySelector("#" + prefix + a.axis + "_type");
                return values && values.value === (a.values || "") && fold(dropdownText(type)) === fold(a.type);
            });
        }
        try {
            // an answer to an earlier event may still overwrite a box: check a while, redo if it did
            var calm = 0;
            for (var round = 0; round < 60 && calm < 6; round++) {
                if (settled()) {
                    calm += 1;
                } else {
                    calm = 0;
                    await apply();
                }
                await sleep(5 * STEP_MS);
            }
            if (!settled()) {
                problems.push("the X/Y/Z plot fields did not keep their values");
            }
        } catch (err) {
            problems.push(String(err && err.message ? err.message : err));
        }
        return {ok: problems.length === 0, problems: problems};
    }

    return {fill: fill, choose: choose};
})();

function lora_trainer_send_xyz_to_txt2img(payload_json) {
    var payload = null;
    try {
        payload = typeof payload_json === "string" ? JSON.parse(payload_json) : payload_json;
    } catch (err) {
        console.error("LoRA Trainer: the comparison payload is not JSON", err);
    }
    if (payload && typeof payload === "object") {
        lora_trainer_send_xyz_to_txt2img.last = lora_trainer_xyz.fill(payload).then(function(outcome) {
            if (!outcome.ok) {
                console.warn("LoRA Trainer: Send to txt2img: " + outcome.problems.join("; "));
            }
            return outcome;
        }, function(err) {
            console.error("LoRA Trainer: Send to txt2img failed", err);
            return {ok: false, problems: [String(err)]};
        });
    }
    return [payload_json];
}

(function() {
    var timer = null;

    function pollSeconds() {
        var value = (typeof opts === "object" && opts) ? Number(opts.lora_trainer_poll_seconds) : NaN;
        return isNaN(value) ? 2 : value;
    }

    function tabVisible() {
        var tab = lora_trainer_app().getElementById("tab_lora_trainer");
        if (!tab) {
            return false;
        }
        if (typeof uiElementIsVisible === "function") {
            return uiElementIsVisible(tab);
        }
        return tab.offsetParent !== null;
    }

    function tick() {
        timer = null;
        var seconds = pollSeconds();
        if (seconds <= 0) {
            timer = setTimeout(tick, 5000); // look again later: the setting may change
            return;
        }
        if (!document.hidden && tabVisible()) {
            var button = lora_trainer_app().getElementById("lora_trainer_refresh_button");
            if (button) {
                button.click();
            }
        }
        timer = setTimeout(tick, seconds * 1000);
    }

    function start() {
        if (timer === null) {
            timer = setTimeout(tick, 1000);
        }
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(start);
    } else {
        document.addEventListener("DOMContentLoaded", start);
    }
})();
