// LoRA Trainer: small browser glue for the WebUI (loaded by the WebUI from javascript/).
//
// - lora_trainer_send_to_txt2img(prompt): put a prompt (e.g. "<lora:name:0.8> trigger")
//   into txt2img's prompt box and switch to the txt2img tab. Usable as a gradio `_js`
//   function: it returns its arguments unchanged.
// - While the LoRA Trainer tab is visible, the hidden button #lora_trainer_refresh_button
//   (if the tab has one) is clicked every `opts.lora_trainer_poll_seconds` seconds
//   (default 2; 0 turns it off) so progress and the queue stay current.

/* global gradioApp, onUiLoaded, opts, updateInput, switch_to_txt2img, uiElementIsVisible */

function lora_trainer_send_to_txt2img(prompt) {
    var app = gradioApp();
    var textarea = app.querySelector("#txt2img_prompt textarea");
    if (textarea && typeof prompt === "string") {
        textarea.value = prompt;
        if (typeof updateInput === "function") {
            updateInput(textarea);
        } else {
            textarea.dispatchEvent(new Event("input", {bubbles: true}));
        }
    }
    if (typeof switch_to_txt2img === "function") {
        switch_to_txt2img();
    }
    return Array.from(arguments);
}

(function() {
    var timer = null;

    function pollSeconds() {
        var value = (typeof opts === "object" && opts) ? Number(opts.lora_trainer_poll_seconds) : NaN;
        return isNaN(value) ? 2 : value;
    }

    function tabVisible() {
        var tab = gradioApp().getElementById("tab_lora_trainer");
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
            var button = gradioApp().getElementById("lora_trainer_refresh_button");
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
